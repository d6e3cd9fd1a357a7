#!/usr/bin/env bash
# Checks the .deb that scripts/build-deb.sh made (the newest target/debian/inferd_*.deb, or the
# one given):
#   1. its files are exactly: inferd, inferctl, inferd-exporter and shmdump in /usr/bin (0755, each
#      answering --version with its name and the workspace version), every unit of systemd/
#      (inferd@ templates too) in /usr/lib/systemd/system as systemd/ has it but for /usr/bin
#      in place of /usr/local/bin, sysusers.d and tmpfiles.d in /usr/lib, /etc/inferd/inferd.toml,
#      and the docs (README, copyright, changelog); nothing names /usr/local;
#   2. its control data: Package, Version (the workspace version, Debian revision 1, the
#      changelog's latest entry), Architecture (this host's), Depends (libc6 and systemd),
#      Maintainer (Cargo.toml's), a one-line synopsis; conffiles is /etc/inferd/inferd.toml;
#      postinst enables every non-template unit with an [Install] section, and only those;
#   3. as root, its maintainer scripts in a staging root (DPKG_ROOT, as dpkg --root runs them):
#      postinst configure makes the users, groups and /var/lib/inferd and enables the units, as
#      scripts/install.sh --root does; postrm remove then purge disables them and removes
#      /var/lib/inferd and /etc/inferd, and keeps the users;
#   4. lintian reports no error (E:); its warnings are printed.
# Installs lintian when missing (scripts/setup-deb.sh). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-deb: FAIL: $*" >&2; exit 1; }
say() { echo "check-deb: $*"; }

bash scripts/setup-deb.sh
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
deb=${1:-$(ls -t "$target_dir"/debian/inferd_*.deb 2>/dev/null | head -1)}
[[ -n $deb && -f $deb ]] || fail "no .deb (run scripts/build-deb.sh, or pass its path)"
say "$deb"

toml() { python3 -c 'import sys, tomllib; d = tomllib.load(open(sys.argv[1], "rb"))
for k in sys.argv[2].split("."): d = d[k]
print(d)' "$@"; }
version=$(toml Cargo.toml workspace.package.version)
maintainer=$(toml inferd/Cargo.toml package.metadata.deb.maintainer)
synopsis=$(toml inferd/Cargo.toml package.description)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
dpkg-deb -x "$deb" "$root"
dpkg-deb -e "$deb" "$work/control"

# --- 1. the files ---------------------------------------------------------------------------
shopt -s nullglob
units=()
for unit in systemd/*.service systemd/*.socket; do units+=("${unit##*/}"); done
((${#units[@]})) || fail "no units in systemd/"
{
  printf '%s\n' /usr/bin/inferd /usr/bin/inferctl /usr/bin/inferd-exporter /usr/bin/shmdump
  printf '/usr/lib/systemd/system/%s\n' "${units[@]}"
  printf '%s\n' /usr/lib/sysusers.d/inferd.conf /usr/lib/tmpfiles.d/inferd.conf /etc/inferd/inferd.toml \
    /usr/share/doc/inferd/README.md /usr/share/doc/inferd/copyright /usr/share/doc/inferd/changelog.Debian.gz /usr/share/lintian/overrides/inferd
} | sort >"$work/want"
dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $6 }' | sort >"$work/got"
diff -u "$work/want" "$work/got" >&2 || fail "the package's files are not the expected list (- expected, + packaged)"
say "files: the ${#units[@]} units of systemd/ (${units[*]}), 4 binaries, sysusers.d, tmpfiles.d, conffile, docs"

dpkg-deb -c "$deb" | awk '$1 !~ /^d/ && $2 != "0/0" { print }' | grep . >&2 && fail "files not owned by root:root"
for binary in inferd:inferd inferctl:inferctl inferd-exporter:exporter shmdump:shmdump; do
  path=$root/usr/bin/${binary%%:*}
  [[ $(stat -c %a "$path") == 755 ]] || fail "/usr/bin/${binary%%:*} is not mode 0755"
  got=$("$path" --version) || fail "/usr/bin/${binary%%:*} --version failed"
  [[ $got == "${binary#*:} $version" ]] || fail "/usr/bin/${binary%%:*} --version is '$got', want '${binary#*:} $version'"
done
for unit in "${units[@]}"; do
  sed 's|/usr/local/bin/|/usr/bin/|g' "systemd/$unit" | cmp -s - "$root/usr/lib/systemd/system/$unit" ||
    fail "/usr/lib/systemd/system/$unit is not systemd/$unit with /usr/bin paths"
done
grep -q '^ExecStart=/usr/bin/inferd ' "$root/usr/lib/systemd/system/inferd.service" || fail "inferd.service does not run /usr/bin/inferd"
cmp -s systemd/sysusers.d/inferd.conf "$root/usr/lib/sysusers.d/inferd.conf" || fail "sysusers.d/inferd.conf differs from systemd/"
cmp -s systemd/tmpfiles.d/inferd.conf "$root/usr/lib/tmpfiles.d/inferd.conf" || fail "tmpfiles.d/inferd.conf differs from systemd/"
cmp -s systemd/inferd.toml "$root/etc/inferd/inferd.toml" || fail "/etc/inferd/inferd.toml differs from systemd/inferd.toml"
if hits=$(grep -rl /usr/local "$root" "$work/control"); then fail "/usr/local named in: $hits"; fi
say "contents: binaries are $version, units point at /usr/bin, the rest as in systemd/"

# --- 2. control data ------------------------------------------------------------------------
field() { dpkg-deb -f "$deb" "$1"; }
[[ $(field Package) == inferd ]] || fail "Package is '$(field Package)'"
[[ $(field Version) == "$version-1" ]] || fail "Version is '$(field Version)', want the workspace's $version-1"
[[ $(field Architecture) == "$(dpkg --print-architecture)" ]] || fail "Architecture is '$(field Architecture)'"
[[ $(field Maintainer) == "$maintainer" ]] || fail "Maintainer is '$(field Maintainer)', want '$maintainer'"
depends=$(field Depends)
[[ $depends =~ (^|, )libc6( |,|$) && $depends =~ (^|, )systemd(,|$) ]] || fail "Depends is '$depends', want libc6 and systemd"
[[ $(field Description | head -1) == "$synopsis" ]] || fail "the synopsis is not Cargo.toml's description on one line"
[[ $(cat "$work/control/conffiles") == /etc/inferd/inferd.toml ]] || fail "conffiles is '$(cat "$work/control/conffiles")'"
latest=$(zcat "$root/usr/share/doc/inferd/changelog.Debian.gz" | head -1)
[[ $latest == "inferd ($version-1) "* ]] || fail "the changelog's latest entry is '$latest', not $version-1 (scripts/deb/changelog)"
for script in postinst prerm postrm; do
  [[ -x $work/control/$script ]] || fail "no executable $script"
  sh -n "$work/control/$script" || fail "$script is not valid sh"
done
# The units postinst enables: every non-template unit that has an [Install] section.
enable=()
for unit in "${units[@]}"; do
  [[ $unit == *@* ]] || ! grep -q '^\[Install\]' "systemd/$unit" || enable+=("$unit")
done
listed=$(sed -n 's/^units="\(.*\)"$/\1/p' "$work/control/postinst")
[[ $(tr ' ' '\n' <<<"$listed" | sort) == "$(printf '%s\n' "${enable[@]}" | sort)" ]] ||
  fail "postinst enables '$listed', want the units with [Install]: ${enable[*]}"
say "control: $(field Package) $(field Version) $(field Architecture); Depends: $depends; conffiles: /etc/inferd/inferd.toml"

# --- 3. the maintainer scripts, in a staging root ---------------------------------------------
if [[ $(id -u) -eq 0 ]]; then
  mkdir -p "$root/etc/systemd/system" "$root/var/lib" "$root/run"
  maint() { DPKG_ROOT=$root DPKG_MAINTSCRIPT_PACKAGE=inferd sh "$work/control/$1" "${@:2}" >"$work/log" 2>&1 ||
    { cat "$work/log" >&2; fail "$1 $2 exited non-zero"; }; }
  maint postinst configure
  for user in inferd inferd-exporter; do
    grep -q "^$user:" "$root/etc/passwd" || fail "postinst made no user $user"
  done
  for group in inferd-metrics inferd-clients; do
    grep -q "^$group:" "$root/etc/group" || fail "postinst made no group $group"
  done
  [[ $(stat -c %a "$root/var/lib/inferd") == 750 ]] || fail "postinst made no /var/lib/inferd 0750"
  for link in sockets.target.wants/inferd.socket multi-user.target.wants/inferd.service \
    multi-user.target.wants/inferd-exporter.service; do
    [[ -L $root/etc/systemd/system/$link ]] || fail "postinst did not enable $link"
  done
  maint postinst configure "$version-1"  # an upgrade's configure: idempotent
  # Two instances enabled the way install.sh --gpus 2 does: purge must remove their links too.
  for k in 0 1; do
    ln -sf /usr/lib/systemd/system/inferd@.socket "$root/etc/systemd/system/sockets.target.wants/inferd@$k.socket"
  done
  maint prerm remove
  maint postrm remove
  maint postrm purge
  [[ -z $(find "$root/etc/systemd/system" -type l) ]] || fail "units still enabled after purge: $(find "$root/etc/systemd/system" -type l)"
  [[ ! -e $root/var/lib/inferd && ! -e $root/etc/inferd ]] || fail "purge left /var/lib/inferd or /etc/inferd"
  grep -q '^inferd:' "$root/etc/passwd" || fail "purge removed the inferd user (system users stay)"
  say "maintainer scripts: users, groups, /var/lib/inferd and the units enabled; purge removed them, kept the users"
else
  say "not root: skipping the maintainer scripts in a staging root (systemd-sysusers must chown)"
fi

# --- 4. lintian -------------------------------------------------------------------------------
allow_root=()
[[ $(id -u) -ne 0 ]] || allow_root=(--allow-root)
lintian "${allow_root[@]}" "$deb" >"$work/lintian" 2>&1 || true
cat "$work/lintian"
if grep -q '^E:' "$work/lintian"; then fail "lintian reports errors"; fi
say "lintian: no errors, $(grep -c '^W:' "$work/lintian" || true) warnings"
say "ok"
