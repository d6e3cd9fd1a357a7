#!/usr/bin/env bash
# Installs inferd on a systemd host: binaries, units, users and directories; then enables and
# (re)starts inferd.socket, inferd.service and inferd-exporter.service, or with --gpus one
# inferd per GPU: inferd@0.socket/.service ... inferd@N-1 instead of inferd.socket/.service.
#
#   sudo scripts/install.sh                        build (cargo build --release) and install on this host
#   sudo scripts/install.sh --gpus all             the same, one inferd per GPU that nvidia-smi -L lists
#   scripts/install.sh --root DIR --no-build       stage into DIR as if it were /; touches nothing else
#
# Options:
#   --root DIR     install under DIR; systemd-sysusers, systemd-tmpfiles and `systemctl enable`
#                  act on DIR's /etc, and nothing is started (scripts/check-systemd.sh uses this)
#   --no-build     do not run cargo; use the binaries already in --bin-dir
#   --bin-dir DIR  where the built inferd, inferctl, exporter and shmdump are (default: target/release)
#   --no-start     enable the units but do not (re)start them
#   --gpus all|N   one inferd per GPU, inferd@K for K = 0 .. N-1 (socket /run/inferd/inferd-K.sock,
#                  segment /dev/shm/inferd-K, GPU /dev/nvidiaK; see systemd/inferd@.service).
#                  all: N is the number of GPUs `nvidia-smi -L` lists; with none (or no
#                  nvidia-smi) the single inferd.service is installed instead, and said so.
#                  Without --gpus: the single inferd.service. Either way the other layout's
#                  units are stopped and disabled, so running install again switches layouts.
#
# What goes where (scripts/uninstall.sh removes the same list):
#   /usr/local/bin/inferd, /usr/local/bin/inferctl, /usr/local/bin/inferd-exporter (built as `exporter`),
#   /usr/local/bin/shmdump (prints a live segment: docs/runbook.md's commands use it)
#   /etc/systemd/system/{inferd.service,inferd.socket,inferd@.service,inferd@.socket,inferd-exporter.service}
#   /etc/sysusers.d/inferd.conf, /etc/tmpfiles.d/inferd.conf
#   /etc/inferd/inferd.toml (only if there is none: it is the admin's file once installed)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

root=""
build=1
start=1
bin_dir="$repo/target/release"
gpus=""
gpus_given=0
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
    --gpus) [[ $# -ge 2 ]] || usage; gpus=$2; gpus_given=1; shift 2 ;;
    --gpus=*) gpus=${1#--gpus=}; gpus_given=1; shift ;;
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
# The number of inferd@ instances: 0 is the single inferd.service. Checked before anything is
# built or copied, so a typo changes nothing.
instances=0
if [[ $gpus == all ]]; then
  if ! command -v nvidia-smi >/dev/null; then
    echo "install: --gpus all: nvidia-smi is not installed, so no GPU is known; installing the single inferd.service"
  else
    # "GPU 0: NVIDIA H200 (UUID: GPU-...)"; MIG devices are indented lines under their GPU.
    instances=$(nvidia-smi -L 2>/dev/null | grep -cE '^GPU [0-9]+:' || true)
    if [[ $instances -eq 0 ]]; then
      echo "install: --gpus all: nvidia-smi -L lists no GPU; installing the single inferd.service"
    else
      echo "install: --gpus all: nvidia-smi -L lists $instances GPU(s)"
    fi
  fi
elif [[ $gpus =~ ^[1-9][0-9]{0,2}$ ]]; then
  instances=$gpus
elif [[ $gpus_given -eq 1 ]]; then
  die "--gpus $gpus: give all, or a number of GPUs from 1 to 999 (leave --gpus out for the single inferd.service)"
fi

if [[ $build -eq 1 ]]; then
  echo "install: cargo build --release"
  (cd "$repo" && cargo build --release --locked -p inferd -p exporter -p shm-layout --bins)
fi
# name in --bin-dir : installed name
binaries=(inferd:inferd inferctl:inferctl exporter:inferd-exporter shmdump:shmdump)
for pair in "${binaries[@]}"; do
  [[ -x $bin_dir/${pair%%:*} ]] || die "$bin_dir/${pair%%:*} is missing; build it (cargo build --release) or pass --bin-dir"
done

step() { echo "install: $*"; }
for pair in "${binaries[@]}"; do
  install -D -m 0755 "$bin_dir/${pair%%:*}" "$root/usr/local/bin/${pair#*:}"
done
step "binaries in $root/usr/local/bin"
# Both layouts' units, so that switching between them is only enabling and disabling.
for unit in inferd.service inferd.socket inferd@.service inferd@.socket inferd-exporter.service; do
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

# What to enable, and the other layout's units to stop and disable.
enabled_instances() {
  local link
  for link in "$root"/etc/systemd/system/*.wants/inferd@*.service "$root"/etc/systemd/system/*.wants/inferd@*.socket; do
    [[ -L $link ]] || continue
    link=${link##*/inferd@}
    printf '%s\n' "${link%.*}"
  done
  # On a live host, also instances started by hand without being enabled.
  if [[ -z $root && -d /run/systemd/system ]]; then
    systemctl list-units --all --plain --no-legend 'inferd@*' | awk '{ print $1 }' \
      | sed -n 's/^inferd@\(.*\)\.\(service\|socket\)$/\1/p'
  fi
}
if [[ $instances -eq 0 ]]; then
  sockets=(inferd.socket)
  services=(inferd.service)
  retire=()
  while read -r k; do
    [[ -n $k ]] && retire+=("inferd@$k.socket" "inferd@$k.service")
  done < <(enabled_instances | sort -u)
else
  sockets=()
  services=()
  for ((k = 0; k < instances; k++)); do
    sockets+=("inferd@$k.socket")
    services+=("inferd@$k.service")
  done
  retire=(inferd.socket inferd.service)
  while read -r k; do
    [[ -n $k ]] || continue
    # Kept: exactly 0 .. N-1 (not "01", nor a name that is no GPU index).
    if ! [[ $k =~ ^(0|[1-9][0-9]{0,2})$ ]] || ((k >= instances)); then
      retire+=("inferd@$k.socket" "inferd@$k.service")
    fi
  done < <(enabled_instances | sort -u)
fi
units=("${sockets[@]}" "${services[@]}" inferd-exporter.service)
# Only what is enabled or running needs retiring (and is worth a line of output).
systemctl_here() { if [[ -n $root ]]; then systemctl --root="$root" "$@"; else systemctl "$@"; fi; }
in_use=()
for unit in "${retire[@]}"; do
  if systemctl_here --quiet is-enabled "$unit" 2>/dev/null \
    || { [[ -z $root && -d /run/systemd/system ]] && systemctl --quiet is-active "$unit"; }; then
    in_use+=("$unit")
  fi
done
retire=("${in_use[@]}")

if [[ -n $root ]]; then
  [[ ${#retire[@]} -eq 0 ]] || systemctl --root="$root" --quiet disable "${retire[@]}"
  systemctl --root="$root" --quiet enable "${units[@]}"
  step "enabled ${units[*]} in $root (staging: nothing started)"
elif [[ ! -d /run/systemd/system ]]; then
  [[ ${#retire[@]} -eq 0 ]] || systemctl --quiet disable "${retire[@]}"
  systemctl --quiet enable "${units[@]}"
  step "systemd is not running here: ${units[*]} enabled for the next boot, daemon-reload and start skipped"
else
  systemctl daemon-reload
  # Stopped before the new layout starts: inferd.service and inferd@0 would share GPU 0.
  # Their robots must move to the new socket(s).
  [[ ${#retire[@]} -eq 0 ]] || systemctl --quiet disable --now "${retire[@]}"
  systemctl --quiet enable "${units[@]}"
  if [[ $start -eq 1 ]]; then
    # The sockets are only started, never restarted: they hold the robots' pending connections
    # while the services restart onto the new binaries.
    systemctl start "${sockets[@]}"
    systemctl restart "${services[@]}" inferd-exporter.service
    step "started: $(systemctl is-active "${units[@]}" | tr '\n' ' ')"
  else
    step "enabled; --no-start: not started"
  fi
fi
if [[ ${#retire[@]} -gt 0 ]]; then
  step "disabled, not in this layout: ${retire[*]}"
fi
if [[ $instances -eq 0 ]]; then
  step "done. Robots connect to /run/inferd/inferd.sock and need group inferd-clients (usermod -aG inferd-clients USER); metrics on :9470"
else
  sockets_text="/run/inferd/inferd-K.sock for GPU K = 0 .. $((instances - 1))"
  [[ $instances -gt 1 ]] || sockets_text="/run/inferd/inferd-0.sock (GPU 0)"
  step "done. Robots connect to $sockets_text and need group inferd-clients (usermod -aG inferd-clients USER); metrics on :9470, daemon=\"inferd-K\""
fi
