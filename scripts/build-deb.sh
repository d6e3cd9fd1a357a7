#!/usr/bin/env bash
# Builds the .deb of inferd: inferd, inferctl, inferd-exporter and shmdump in /usr/bin, every unit of
# systemd/ in /usr/lib/systemd/system, sysusers.d and tmpfiles.d in /usr/lib, and
# /etc/inferd/inferd.toml as a conffile; the maintainer scripts (scripts/deb/) do what
# scripts/install.sh does. Prints the .deb's path (in target/debian/) on stdout.
#
#   scripts/build-deb.sh                  cargo build --release, then cargo deb
#   scripts/build-deb.sh --no-build       package the binaries already built
#   scripts/build-deb.sh --profile dev    package the debug build (CI: the binaries its tests
#                                         built already; the same files, larger and slower)
#   --no-dbgsym                           no inferd-dbgsym .ddeb (CI: compressing a debug
#                                         build's DWARF into it takes minutes)
#
# The metadata is [package.metadata.deb] in inferd/Cargo.toml. Installs cargo-deb and lintian
# when missing (scripts/setup-deb.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
profile=release
debug=(--dbgsym)
die() { echo "build-deb: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --no-build) build=0; shift ;;
    --no-dbgsym) debug=(--no-dbgsym --strip); shift ;;
    --profile) [[ $# -ge 2 ]] || die "--profile needs a value"; profile=$2; shift 2 ;;
    --profile=*) profile=${1#--profile=}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

bash scripts/setup-deb.sh

# cargo-deb reads the assets' target/release/ as this profile's output directory.
case $profile in
  release) out=release ;;
  dev) out=debug ;;
  *) out=$profile ;;
esac
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin_dir=$target_dir/$out

if ((build)); then
  echo "build-deb: cargo build --profile $profile -p inferd -p exporter -p shm-layout --bins" >&2
  cargo build --profile "$profile" --locked -p inferd -p exporter -p shm-layout --bins
fi
for binary in inferd inferctl exporter shmdump; do
  [[ -x $bin_dir/$binary ]] || die "$bin_dir/$binary is missing: build it, or drop --no-build"
done

# The units in systemd/ run /usr/local/bin/inferd* (scripts/install.sh's paths: /usr/local is
# the admin's), a package's binaries live in /usr/bin. systemd/ stays the one copy of the units:
# each build writes fresh rewritten copies here, which the assets read by glob, so a unit added
# to systemd/ (the inferd@ templates) is packaged without touching the metadata.
units=$bin_dir/deb/systemd
rm -rf "$units"
mkdir -p "$units"
shopt -s nullglob
copied=0
for unit in systemd/*.service systemd/*.socket; do
  sed 's|/usr/local/bin/|/usr/bin/|g' "$unit" >"$units/${unit##*/}"
  copied=$((copied + 1))
done
((copied)) || die "no units in systemd/"
if leftover=$(grep -l '/usr/local' "$units"/*); then
  die "a unit still names /usr/local after the rewrite: $leftover"
fi

# Stripped binaries (Debian policy; lintian errors otherwise), their line tables (the release
# profile's debug = "line-tables-only") moved to inferd-dbgsym, a .ddeb beside the .deb: with it
# installed, a panic's backtrace has file and line again (found by build id in /usr/lib/debug).
rm -f "$target_dir"/debian/inferd*_"$(dpkg --print-architecture)".*deb
cargo deb -p inferd --no-build --profile "$profile" "${debug[@]}" \
  --output "$target_dir/debian/" --quiet >"$target_dir/debian.path"
deb=$(grep '\.deb$' "$target_dir/debian.path" | tail -1)
[[ -f $deb ]] || die "cargo deb reported no package (got: $deb)"
echo "$deb"
