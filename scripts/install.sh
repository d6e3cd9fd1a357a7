#!/usr/bin/env bash
# Installs inferd on a systemd host: binaries, units, users and directories; then enables and
# (re)starts inferd.socket, inferd.service and inferd-exporter.service.
#
#   sudo scripts/install.sh                        build (cargo build --release) and install on this host
#   scripts/install.sh --root DIR --no-build       stage into DIR as if it were /; touches nothing else
#
# Options:
#   --root DIR     install under DIR; systemd-sysusers, systemd-tmpfiles and `systemctl enable`
#                  act on DIR's /etc, and nothing is started (scripts/check-systemd.sh uses this)
#   --no-build     do not run cargo; use the binaries already in --bin-dir
#   --bin-dir DIR  where the built inferd, inferctl and exporter are (default: target/release)
#   --no-start     enable the units but do not (re)start them
#
# What goes where (scripts/uninstall.sh removes the same list):
#   /usr/local/bin/inferd, /usr/local/bin/inferctl, /usr/local/bin/inferd-exporter (built as `exporter`)
#   /etc/systemd/system/{inferd.service,inferd.socket,inferd-exporter.service}
#   /etc/sysusers.d/inferd.conf, /etc/tmpfiles.d/inferd.conf
#   /etc/inferd/inferd.toml (only if there is none: it is the admin's file once installed)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

root=""
build=1
start=1
bin_dir="$repo/target/release"
die() { echo "install: $*" >&2; exit 1; }
# --help prints the header comment to stdout; a bad command line gets it on stderr.
usage() {
  if [[ ${1:-2} -eq 0 ]]; then help_text; exit 0; fi
  help_text >&2; exit 2
}
help_text() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --root) [[ $# -ge 2 ]] || usage; root=$2; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --no-build) build=0; shift ;;
    --bin-dir) [[ $# -ge 2 ]] || usage; bin_dir=$2; shift 2 ;;
    --bin-dir=*) bin_dir=${1#--bin-dir=}; shift ;;
    --no-start) start=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install: unknown option $1" >&2; usage ;;
  esac
done
if [[ -n $root ]]; then
  [[ -d $root ]] || die "--root $root is not a directory"
  root=$(cd "$root" && pwd)
  [[ $root != / ]] || root=""
fi
if [[ -z $root && $(id -u) -ne 0 ]]; then
  die "installing on this host needs root (sudo $0), or stage with --root DIR"
fi

if [[ $build -eq 1 ]]; then
  echo "install: cargo build --release"
  (cd "$repo" && cargo build --release --locked -p inferd -p exporter --bins)
fi
# name in --bin-dir : installed name
binaries=(inferd:inferd inferctl:inferctl exporter:inferd-exporter)
for pair in "${binaries[@]}"; do
  [[ -x $bin_dir/${pair%%:*} ]] || die "$bin_dir/${pair%%:*} is missing; build it (cargo build --release) or pass --bin-dir"
done

step() { echo "install: $*"; }
for pair in "${binaries[@]}"; do
  install -D -m 0755 "$bin_dir/${pair%%:*}" "$root/usr/local/bin/${pair#*:}"
done
step "binaries in $root/usr/local/bin"
for unit in inferd.service inferd.socket inferd-exporter.service; do
  install -D -m 0644 "$repo/systemd/$unit" "$root/etc/systemd/system/$unit"
done
step "units in $root/etc/systemd/system"
install -D -m 0644 "$repo/systemd/sysusers.d/inferd.conf" "$root/etc/sysusers.d/inferd.conf"
install -D -m 0644 "$repo/systemd/tmpfiles.d/inferd.conf" "$root/etc/tmpfiles.d/inferd.conf"
if [[ -e $root/etc/inferd/inferd.toml ]]; then
  step "keeping $root/etc/inferd/inferd.toml"
else
  install -D -m 0644 "$repo/systemd/inferd.toml" "$root/etc/inferd/inferd.toml"
  step "example configuration in $root/etc/inferd/inferd.toml"
fi

# Users before directories: tmpfiles resolves the owners by name.
root_opt=()
[[ -z $root ]] || root_opt=(--root="$root")
if [[ $(id -u) -eq 0 ]]; then
  systemd-sysusers "${root_opt[@]}" inferd.conf
  systemd-tmpfiles "${root_opt[@]}" --create inferd.conf
  step "users, groups and /run/inferd, /var/lib/inferd created"
else
  step "not root: skipping systemd-sysusers and systemd-tmpfiles (they must chown)"
fi

units=(inferd.socket inferd.service inferd-exporter.service)
if [[ -n $root ]]; then
  systemctl --root="$root" --quiet enable "${units[@]}"
  step "enabled in $root (staging: nothing started)"
elif [[ ! -d /run/systemd/system ]]; then
  systemctl --quiet enable "${units[@]}"
  step "systemd is not running here: units enabled for the next boot, daemon-reload and start skipped"
else
  systemctl daemon-reload
  systemctl --quiet enable "${units[@]}"
  if [[ $start -eq 1 ]]; then
    # The socket is only started, never restarted: it holds the robots' pending connections
    # while the services restart onto the new binaries.
    systemctl start inferd.socket
    systemctl restart inferd.service inferd-exporter.service
    step "started: $(systemctl is-active "${units[@]}" | tr '\n' ' ')"
  else
    step "enabled; --no-start: not started"
  fi
fi
step "done. Robots need group inferd-clients (usermod -aG inferd-clients USER); metrics on :9470"
