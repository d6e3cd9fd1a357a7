#!/usr/bin/env bash
# Checks the systemd side of a deployment without touching this host:
#   1. scripts/install.sh --root stages binaries, units, users and directories into a temp root
#      (twice: it must be idempotent and keep an edited /etc/inferd/inferd.toml), and what it
#      made is checked: files and modes, users and groups, /run/inferd, the enable symlinks;
#   2. `systemd-analyze verify` on the units in that root (the single ones and instances 0 and 1
#      of the inferd@ templates) prints nothing and exits 0;
#   3. `systemd-analyze security --offline=yes` scores each service (inferd@0 too) at most 2.5;
#   4. the choices the segment depends on are still in the units (see the comments there), and
#      inferd@.service/.socket are inferd.service/.socket but for their per-instance lines;
#   5. scripts/uninstall.sh --root removes what install put there, --purge the rest;
#   6. install.sh --gpus: N and all (with a stand-in nvidia-smi on PATH) enable inferd@0..N-1
#      and not the single unit, switching back retires the instances, bad values are refused,
#      and uninstall removes the instances. tests/systemd/instances.sh runs two of them.
# The binaries come from target/release, else target/debug; with neither built, placeholder
# executables stand in (verify only checks that ExecStart= names an executable).
# Needs systemd-analyze, systemd-sysusers and systemd-tmpfiles; not a running systemd. Run as
# root to check ownership (tmpfiles must chown); otherwise those checks are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
max_exposure=2.5
services=(inferd.service inferd-exporter.service inferd@0.service)
units=(inferd.socket "${services[@]}" inferd@0.socket inferd@1.service inferd@1.socket)

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles systemctl; do
  command -v "$tool" >/dev/null || { echo "check-systemd: $tool is missing (apt-get install systemd)" >&2; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/tmp}/check-systemd.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
root=$work/root
mkdir -p "$root"
failures=0
fail() { echo "check-systemd: FAIL: $*" >&2; failures=$((failures + 1)); }
ok() { echo "check-systemd: ok: $*"; }

bins=""
for dir in target/release target/debug; do
  if [[ -x $dir/inferd && -x $dir/inferctl && -x $dir/exporter && -x $dir/shmdump ]]; then
    bins=$dir
    break
  fi
done
placeholders=$work/placeholder-bin
mkdir -p "$placeholders"
for b in inferd inferctl exporter shmdump; do
  printf '#!/bin/sh\necho "placeholder for %s" >&2\nexit 1\n' "$b" >"$placeholders/$b"
  chmod 0755 "$placeholders/$b"
done
if [[ -z $bins ]]; then
  bins=$placeholders
  echo "check-systemd: no built binaries in target/; installing placeholders"
fi

# --- 1. install into a staging root -----------------------------------------------------------
run_logged() {
  local log=$work/log
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    fail "$*"
    return 1
  fi
}
run_logged bash scripts/install.sh --root "$root" --no-build --bin-dir "$bins" --no-start || exit 1
echo "# edited by the check" >>"$root/etc/inferd/inferd.toml"
run_logged bash scripts/install.sh --root "$root" --no-build --bin-dir "$bins" --no-start || exit 1
grep -q "keeping $root/etc/inferd/inferd.toml" "$work/log" && grep -q "edited by the check" "$root/etc/inferd/inferd.toml" \
  && ok "a second install keeps the edited configuration" || fail "a second install replaced /etc/inferd/inferd.toml"

mode_of() { stat -c %a "$1"; }
for f in usr/local/bin/inferd usr/local/bin/inferctl usr/local/bin/inferd-exporter usr/local/bin/shmdump; do
  [[ -x $root/$f && $(mode_of "$root/$f") == 755 ]] || fail "/$f missing or not mode 0755"
done
cmp -s "$bins/exporter" "$root/usr/local/bin/inferd-exporter" || fail "/usr/local/bin/inferd-exporter is not the exporter binary"
for f in etc/systemd/system/{inferd.service,inferd.socket,inferd@.service,inferd@.socket,inferd-exporter.service} \
         etc/sysusers.d/inferd.conf etc/tmpfiles.d/inferd.conf etc/inferd/inferd.toml; do
  [[ -f $root/$f && $(mode_of "$root/$f") == 644 ]] || fail "/$f missing or not mode 0644"
done
for link in sockets.target.wants/inferd.socket multi-user.target.wants/inferd.service \
            multi-user.target.wants/inferd-exporter.service; do
  [[ -L $root/etc/systemd/system/$link ]] || fail "not enabled: /etc/systemd/system/$link"
done
ok "files, modes and enable symlinks"

if [[ $(id -u) -eq 0 ]]; then
  # name:members of each group, and each user's primary group, as sysusers wrote them.
  group_line() { awk -F: -v g="$1" '$1 == g { print $1 ":" $4 }' "$root/etc/group"; }
  [[ $(group_line inferd-metrics) == "inferd-metrics:inferd,inferd-exporter" ]] || fail "group inferd-metrics: '$(group_line inferd-metrics)'"
  [[ $(group_line inferd-clients) == "inferd-clients:" ]] || fail "group inferd-clients: '$(group_line inferd-clients)'"
  for u in inferd inferd-exporter; do
    grep -q "^$u:x:[0-9]*:[0-9]*:.*:/usr/sbin/nologin$" "$root/etc/passwd" || fail "user $u missing or has a login shell"
  done
  id_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$root/etc/$2"; }
  want="750 $(id_of inferd passwd) $(id_of inferd-clients group)"
  got=$(stat -c '%a %u %g' "$root/run/inferd")
  [[ $got == "$want" ]] || fail "/run/inferd is '$got', want '$want' (0750 inferd:inferd-clients)"
  want="750 0 $(id_of inferd group)"
  got=$(stat -c '%a %u %g' "$root/var/lib/inferd")
  [[ $got == "$want" ]] || fail "/var/lib/inferd is '$got', want '$want' (0750 root:inferd)"
  ok "users, groups, /run/inferd and /var/lib/inferd"
else
  echo "check-systemd: not root: skipping the users, groups and directory ownership checks"
fi

# --- 2. systemd-analyze verify -------------------------------------------------------------------
# The units order themselves against systemd's own targets and ExecReload= runs /bin/kill: give
# the staging root those from this host, as a real root would have them.
mkdir -p "$root/usr/lib/systemd" "$root/usr/bin"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$(type -P kill)" "$root/usr/bin/kill"
[[ -e $root/bin ]] || ln -s usr/bin "$root/bin"
out=$(systemd-analyze verify --root="$root" "${units[@]}" 2>&1) && rc=0 || rc=$?
if [[ $rc -ne 0 || -n $out ]]; then
  printf '%s\n' "$out" >&2
  fail "systemd-analyze verify exited $rc and must print nothing"
else
  ok "systemd-analyze verify ${units[*]}: clean"
fi

# --- 3. exposure scores ------------------------------------------------------------------------
for svc in "${services[@]}"; do
  report=$(systemd-analyze security --offline=yes --no-pager --root="$root" "$svc" 2>&1) || true
  score=$(printf '%s\n' "$report" | sed -n "s/.*Overall exposure level for $svc: \([0-9.]*\).*/\1/p")
  if [[ -z $score ]]; then
    printf '%s\n' "$report" >&2
    fail "no exposure score for $svc"
  elif awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
    ok "$svc exposure $score (at most $max_exposure)"
  else
    printf '%s\n' "$report" | grep '✗' >&2
    fail "$svc exposure $score is above $max_exposure"
  fi
done

# --- 4. what the shared segment and the GPUs depend on -------------------------------------------
# setting=value lines that must (or must not) be in each unit; see the comments in the units.
before=$failures
has() { grep -qx "$2" "systemd/$1"; }
must() { has "$1" "$2" || fail "$1 lacks '$2'"; }
must_not() { ! grep -qE "^$2" "systemd/$1" || fail "$1 must not set $2 ($(grep -E "^$2" "systemd/$1"))"; }
for svc in inferd.service inferd-exporter.service; do
  for setting in "NoNewPrivileges=yes" "ProtectSystem=strict" "ProtectHome=yes" "PrivateTmp=yes" \
                 "CapabilityBoundingSet=" "DevicePolicy=closed" "DeviceAllow=char-nvidia\* rw" \
                 "DeviceAllow=/dev/nvidiactl rw" "SystemCallFilter=@system-service" "RemoveIPC=no"; do
    must "$svc" "$setting"
  done
  # Each would hide or delete the segment in /dev/shm, or the GPUs.
  must_not "$svc" "(PrivateDevices|DynamicUser|RemoveIPC)=(yes|true|1|on)"
done
must inferd.service "Group=inferd-metrics"
must inferd.service "ReadWritePaths=/dev/shm"
must inferd.service "RestrictAddressFamilies=AF_UNIX"
must inferd.service "Requires=inferd.socket"
must inferd.service "Type=notify"
must inferd.service "DeviceAllow=/dev/nvidia-uvm rw"
must inferd.service "ExecStart=/usr/local/bin/inferd --config /etc/inferd/inferd.toml"
must inferd-exporter.service "SupplementaryGroups=inferd-metrics"
must inferd-exporter.service "ReadOnlyPaths=/dev/shm"
must inferd-exporter.service "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"
must inferd-exporter.service "ExecStart=/usr/local/bin/inferd-exporter"
must inferd-exporter.service "CPUSchedulingPolicy=idle"
must inferd.service "RestartPreventExitStatus=78"
must inferd-exporter.service "RestartPreventExitStatus=78"
must_not inferd-exporter.service "ProtectProc=(invisible|ptraceable|noaccess)"
must inferd.socket "ListenStream=/run/inferd/inferd.sock"
must inferd.socket "SocketGroup=inferd-clients"
must inferd.socket "SocketMode=0660"
[[ $failures -ne $before ]] || ok "segment, socket and GPU settings"

# The templates are the single units with only these lines changed; every other setting (the
# hardening above included) must be the same, so that a change to one file cannot miss the other.
before=$failures
settings() { grep -vE '^[[:space:]]*([#;]|$)' "systemd/$1"; }
same_but() {
  local single=$1 template=$2
  shift 2
  local diff
  if ! diff=$(diff <(settings "$single" | sed "$@") <(settings "$template")); then
    printf '%s\n' "$diff" >&2
    fail "$template differs from $single beyond its per-instance lines (< what $single implies, > $template)"
  fi
}
same_but inferd.service 'inferd@.service' \
  -e 's/^Description=inferd robot policy server$/& on GPU %i/' \
  -e 's/^\(Requires\|After\|Also\)=inferd\.socket$/\1=inferd@%i.socket/' \
  -e 's/^\(ExecStartPre=+-\/usr\/bin\/nvidia-modprobe -u -c=\)0$/\1%i/' \
  -e 's|^ExecStart=/usr/local/bin/inferd --config /etc/inferd/inferd.toml$|Environment=INFERD_CONFIG=/etc/inferd/inferd.toml\nEnvironment=INFERD_DEVICE=cuda:0\nEnvironment=INFERD_ARGS=\nExecStart=/usr/local/bin/inferd --config ${INFERD_CONFIG} --device ${INFERD_DEVICE} --segment-name inferd-%i $INFERD_ARGS|' \
  -e 's|^DeviceAllow=char-nvidia\* rw$|DeviceAllow=/dev/nvidia%i rw\nDeviceAllow=char-nvidia-caps rw|'
same_but inferd.socket 'inferd@.socket' \
  -e 's/^Description=inferd robot policy socket$/& for GPU %i/' \
  -e 's|^ListenStream=/run/inferd/inferd\.sock$|ListenStream=/run/inferd/inferd-%i.sock|' \
  -e 's/^FileDescriptorName=inferd$/FileDescriptorName=inferd-%i/'
# An instance may open its own GPU only (see inferd@.service on why that makes it CUDA device 0).
must_not 'inferd@.service' "DeviceAllow=char-nvidia(\*| )"
[[ $failures -ne $before ]] || ok "inferd@.service and inferd@.socket are inferd.service and inferd.socket but for GPU %i's device, socket and segment"

# --- 5. uninstall ------------------------------------------------------------------------------
run_logged bash scripts/uninstall.sh --root "$root" || exit 1
for f in usr/local/bin/inferd usr/local/bin/inferctl usr/local/bin/inferd-exporter usr/local/bin/shmdump \
         etc/systemd/system/{inferd.service,inferd.socket,inferd-exporter.service} \
         etc/systemd/system/sockets.target.wants/inferd.socket \
         etc/systemd/system/multi-user.target.wants/{inferd.service,inferd-exporter.service} \
         etc/sysusers.d/inferd.conf etc/tmpfiles.d/inferd.conf; do
  [[ ! -e $root/$f && ! -L $root/$f ]] || fail "uninstall left /$f"
done
[[ -f $root/etc/inferd/inferd.toml ]] || fail "uninstall without --purge removed /etc/inferd"
run_logged bash scripts/uninstall.sh --root "$root" --purge || exit 1
for d in etc/inferd var/lib/inferd run/inferd; do
  [[ ! -e $root/$d ]] || fail "uninstall --purge left /$d"
done
ok "uninstall removes what install added; --purge the configuration and directories"

# --- 6. install.sh --gpus ------------------------------------------------------------------------
before=$failures
groot=$work/gpus-root
mkdir -p "$groot"
# Only the units matter here: placeholders spare copying the real binaries a dozen times.
install_gpus() { bash scripts/install.sh --root "$groot" --no-build --bin-dir "$placeholders" --no-start "$@"; }
wants=$groot/etc/systemd/system
# The enable symlinks of inferd's units, one "target.wants/unit" a line, sorted.
links() { (cd "$wants" && find . -path './*.wants/inferd*' -type l | sed 's|^\./||' | sort | tr '\n' ' '); }
single="multi-user.target.wants/inferd-exporter.service multi-user.target.wants/inferd.service sockets.target.wants/inferd.socket "
two="multi-user.target.wants/inferd-exporter.service multi-user.target.wants/inferd@0.service multi-user.target.wants/inferd@1.service sockets.target.wants/inferd@0.socket sockets.target.wants/inferd@1.socket "
expect_links() {
  local what=$1 want=$2 got
  got=$(links)
  [[ $got == "$want" ]] || fail "$what: enabled '$got', want '$want'"
}
run_logged install_gpus --gpus 2 && expect_links "--gpus 2" "$two"
# Switching back to the single unit retires the instances, and to fewer instances the extra ones.
run_logged install_gpus && expect_links "no --gpus after --gpus 2" "$single"
grep -q "disabled, not in this layout: inferd@0.socket inferd@0.service inferd@1.socket inferd@1.service" "$work/log" \
  || fail "install without --gpus did not say it retired the instances: $(cat "$work/log")"
run_logged install_gpus --gpus=2 && expect_links "--gpus=2 after the single unit" "$two"
run_logged install_gpus --gpus 1 \
  && expect_links "--gpus 1 after --gpus 2" "multi-user.target.wants/inferd-exporter.service multi-user.target.wants/inferd@0.service sockets.target.wants/inferd@0.socket "

# --gpus all counts what `nvidia-smi -L` lists: GPU lines, not their MIG devices.
fake=$work/fake-bin
mkdir -p "$fake"
cat >"$fake/nvidia-smi" <<'SMI'
#!/bin/sh
[ "$1" = -L ] || exit 2
cat "$(dirname "$0")/gpus"
SMI
chmod 0755 "$fake/nvidia-smi"
printf '%s\n' "GPU 0: NVIDIA H200 (UUID: GPU-11111111-2222-3333-4444-555555555555)" \
  "  MIG 1g.18gb     Device  0: (UUID: MIG-66666666-7777-8888-9999-000000000000)" \
  "GPU 1: NVIDIA H200 (UUID: GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)" >"$fake/gpus"
PATH=$fake:$PATH run_logged install_gpus --gpus all && expect_links "--gpus all, two GPUs listed" "$two"
grep -q "nvidia-smi -L lists 2 GPU(s)" "$work/log" || fail "--gpus all did not report the 2 GPUs: $(cat "$work/log")"
: >"$fake/gpus"
PATH=$fake:$PATH run_logged install_gpus --gpus all && expect_links "--gpus all, no GPU listed" "$single"
grep -q "lists no GPU; installing the single inferd.service" "$work/log" || fail "--gpus all with no GPU did not say so: $(cat "$work/log")"

# A bad count changes nothing and names the value.
for bad in 0 foo -1 2x 1000 ""; do
  if out=$(install_gpus --gpus "$bad" 2>&1); then
    fail "--gpus '$bad' was accepted"
  elif [[ $out != *"--gpus $bad: give all, or a number of GPUs from 1 to 999"* ]]; then
    fail "--gpus '$bad': unclear error: $out"
  fi
done
expect_links "after the refused --gpus values" "$single"

run_logged install_gpus --gpus 2 && run_logged bash scripts/uninstall.sh --root "$groot" --purge
got=$(links)
[[ -z $got ]] || fail "uninstall left enabled: $got"
for f in inferd@.service inferd@.socket; do
  [[ ! -e $wants/$f ]] || fail "uninstall left /etc/systemd/system/$f"
done
[[ $failures -ne $before ]] || ok "install.sh --gpus N|all enables inferd@0..N-1 (not the single unit), switches back, refuses bad counts; uninstall removes the instances"

if [[ $failures -gt 0 ]]; then
  echo "check-systemd: $failures check(s) failed" >&2
  exit 1
fi
echo "check-systemd: all checks passed"
