#!/usr/bin/env bash
# Undoes scripts/install.sh: stops and disables the units (the single inferd.service and every
# inferd@K instance), removes the binaries, units and sysusers/tmpfiles entries.
#
#   sudo scripts/uninstall.sh                   on this host
#   scripts/uninstall.sh --root DIR             from a staging root made by install.sh --root DIR
#
# Options:
#   --root DIR   act on DIR as if it were /
#   --purge      also remove /etc/inferd (the configuration), the units' drop-in directories
#                (/etc/systemd/system/inferd*.d, what `systemctl edit` made), /var/lib/inferd
#                (models), /run/inferd and inferd's metrics segments /dev/shm/inferd*
#
# Users and groups (inferd, inferd-exporter, inferd-metrics, inferd-clients) are kept, as
# Debian does for system users: files elsewhere may still carry their ids, and a reused id would
# hand them to someone else. Remove them by hand if you are sure:
#   userdel inferd; userdel inferd-exporter; groupdel inferd-metrics; groupdel inferd-clients
set -euo pipefail

root=""
purge=0
die() { echo "uninstall: $*" >&2; exit 1; }
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
    --purge) purge=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "uninstall: unknown option $1" >&2; usage ;;
  esac
done
if [[ -n $root ]]; then
  [[ -d $root ]] || die "--root $root is not a directory"
  root=$(cd "$root" && pwd)
  [[ $root != / ]] || root=""
fi
if [[ -z $root && $(id -u) -ne 0 ]]; then
  die "uninstalling from this host needs root (sudo $0), or use --root DIR"
fi
step() { echo "uninstall: $*"; }

units=(inferd.socket inferd.service inferd-exporter.service)
present=()
for unit in "${units[@]}"; do
  [[ ! -e $root/etc/systemd/system/$unit ]] || present+=("$unit")
done
# inferd@K instances: the enabled ones (their symlinks), and on a live host any started by hand.
instances=$(
  for link in "$root"/etc/systemd/system/*.wants/inferd@*.service "$root"/etc/systemd/system/*.wants/inferd@*.socket; do
    [[ -L $link ]] && basename "$link"
  done
  if [[ -z $root && -d /run/systemd/system ]]; then
    systemctl list-units --all --plain --no-legend 'inferd@*' | awk '{ print $1 }'
  fi
)
if [[ -e $root/etc/systemd/system/inferd@.service ]]; then
  while read -r unit; do
    [[ $unit =~ ^inferd@.*\.(service|socket)$ ]] && present+=("$unit")
  done < <(printf '%s\n' "$instances" | sort -u)
fi
if [[ ${#present[@]} -gt 0 ]]; then
  if [[ -n $root ]]; then
    systemctl --root="$root" --quiet disable "${present[@]}"
  elif [[ -d /run/systemd/system ]]; then
    # --now stops them as well.
    systemctl --quiet disable --now "${present[@]}"
  else
    systemctl --quiet disable "${present[@]}"
    step "systemd is not running here: nothing to stop"
  fi
  step "disabled ${present[*]}"
fi

files=(
  /usr/local/bin/inferd
  /usr/local/bin/inferctl
  /usr/local/bin/inferd-exporter
  /usr/local/bin/shmdump
  /etc/systemd/system/inferd.service
  /etc/systemd/system/inferd.socket
  /etc/systemd/system/inferd@.service
  /etc/systemd/system/inferd@.socket
  /etc/systemd/system/inferd-exporter.service
  /etc/sysusers.d/inferd.conf
  /etc/tmpfiles.d/inferd.conf
)
for f in "${files[@]}"; do
  if [[ -e $root$f || -L $root$f ]]; then
    rm -f -- "$root$f"
    step "removed $root$f"
  fi
done
if [[ -z $root && -d /run/systemd/system ]]; then
  systemctl daemon-reload
fi

if [[ $purge -eq 1 ]]; then
  for d in /etc/inferd /var/lib/inferd /run/inferd "$root"/etc/systemd/system/inferd{,@*,-exporter}.{service,socket}.d; do
    d=${d#"$root"}
    if [[ -e $root$d ]]; then
      rm -rf -- "$root$d"
      step "purged $root$d"
    fi
  done
  # Segments live in the host's /dev/shm; a staging root has none of its own.
  if [[ -z $root ]]; then
    for seg in /dev/shm/inferd*; do
      [[ -f $seg ]] || continue
      rm -f -- "$seg"
      step "purged $seg"
    done
  fi
else
  step "kept /etc/inferd, the units' drop-ins, /var/lib/inferd and the users (--purge removes all but the users)"
fi
step "done"
