#!/usr/bin/env bash
# One inferd per GPU, end to end without root, a GPU or a running systemd:
#   1. scripts/install.sh --root --gpus 2 stages inferd@0 and inferd@1 into a temp root;
#   2. each instance's ExecStart=, environment, socket and fd name are read from the installed
#      units with %i expanded (tests/systemd/unit.py: the unit, its drop-ins, Environment=,
#      ${X} and $X), and checked: socket /run/inferd/inferd-K.sock, segment inferd-K, CUDA
#      device 0 of the one GPU the instance may open;
#   3. drop-ins, as an admin would write them with `systemctl edit`: inferd@1.service.d for one
#      instance (INFERD_ARGS=--workers 2, a per-instance flag over the shared inferd.toml), and
#      on a machine without a GPU inferd@.service.d for both (INFERD_DEVICE=cpu). Where
#      `nvidia-smi -L` lists a GPU both run as shipped, on CUDA device 0 (without the units'
#      device cgroup both get GPU 0, which is all a one-GPU machine can check);
#   4. both run as their units would, socket-activated by systemd-socket-activate on the
#      socket path of their .socket unit (under a temp dir instead of /run) with its
#      FileDescriptorName, and with --segment-dir pointing at a temp dir in /dev/shm instead of
#      /dev/shm itself: the only two changes to the installed command lines, so no root is
#      needed and nothing the host's own exporter reads is touched;
#   5. one request to inferd@0 and two to inferd@1 (each first request is what starts its
#      daemon, as a robot's first connection starts a socket-activated unit), then one
#      exporter, run as inferd-exporter.service would with --segment-dir and a free port;
#      its /metrics must show both daemons, labelled daemon="inferd-0" and "inferd-1" and
#      no other, up, each with its own request count and its own worker count.
#
#   tests/systemd/instances.sh [--bin-dir DIR]   (default: target/debug, or $INFERD_BIN_DIR, as the
#   other end-to-end scripts; never a target/release that may be older than the tree)
#
# Needs python3, systemd-socket-activate (package systemd) and the built inferd, inferctl and
# exporter. Takes about 5 s.
set -euo pipefail
cd "$(dirname "$0")/../.."

bins=${INFERD_BIN_DIR:-target/debug}
while [[ $# -gt 0 ]]; do
  case $1 in
    --bin-dir) [[ $# -ge 2 ]] || { echo "instances: --bin-dir needs a directory" >&2; exit 2; }; bins=$2; shift 2 ;;
    *) echo "instances: unknown option $1 (usage: $0 [--bin-dir DIR])" >&2; exit 2 ;;
  esac
done
[[ -n $bins && -x $bins/inferd && -x $bins/inferctl && -x $bins/exporter ]] \
  || { echo "instances: no built inferd, inferctl and exporter (cargo build -p inferd -p exporter, or --bin-dir DIR)" >&2; exit 1; }
for tool in python3 systemd-socket-activate; do
  command -v "$tool" >/dev/null || { echo "instances: $tool is missing (apt-get install python3 systemd)" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/instances.XXXXXX")
# inferd refuses a segment directory that is not tmpfs. Not named inferd*: every exporter on
# this host reads /dev/shm/inferd*, and would report a directory there as a refused segment.
shm=$(mktemp -d /dev/shm/units-test.XXXXXX)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf -- "$work" "$shm"
}
trap cleanup EXIT
root=$work/root
mkdir -p "$root"
failures=0
fail() { echo "instances: FAIL: $*" >&2; failures=$((failures + 1)); }
ok() { echo "instances: ok: $*"; }
die() { echo "instances: FAIL: $*" >&2; exit 1; }
unit() { python3 tests/systemd/unit.py --root "$root" "$@"; }

# --- 1. stage two instances ---------------------------------------------------------------------
bash scripts/install.sh --root "$root" --no-build --bin-dir "$bins" --no-start --gpus 2 >"$work/install.log" 2>&1 \
  || { cat "$work/install.log" >&2; die "install.sh --gpus 2"; }
for k in 0 1; do
  [[ -L $root/etc/systemd/system/sockets.target.wants/inferd@$k.socket ]] || fail "inferd@$k.socket not enabled"
done
[[ ! -e $root/etc/systemd/system/multi-user.target.wants/inferd.service ]] || fail "the single inferd.service is enabled too"

# --- 2. what the installed units say, as shipped --------------------------------------------------
for k in 0 1; do
  listen=$(unit get "inferd@$k.socket" Socket ListenStream)
  fdname=$(unit get "inferd@$k.socket" Socket FileDescriptorName)
  argv=$(unit argv "inferd@$k.service" | tr '\n' ' ')
  [[ $listen == "/run/inferd/inferd-$k.sock" ]] || fail "inferd@$k.socket listens on $listen"
  [[ $fdname == "inferd-$k" ]] || fail "inferd@$k.socket names its fd $fdname"
  want="/usr/local/bin/inferd --config /etc/inferd/inferd.toml --device cuda:0 --segment-name inferd-$k "
  [[ $argv == "$want" ]] || fail "inferd@$k.service runs '$argv', want '$want'"
done
[[ $failures -eq 0 ]] && ok "inferd@0 and inferd@1: sockets /run/inferd/inferd-{0,1}.sock, segments inferd-{0,1}, CUDA device 0 each"

# --- 3. the admin's drop-ins ------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -qE '^GPU [0-9]+:'; then
  device='backend="cuda",device="cuda:0"'
  echo "instances: nvidia-smi lists a GPU: running both instances as shipped, on cuda:0"
else
  device='backend="cpu",device="cpu"'
  mkdir -p "$root/etc/systemd/system/inferd@.service.d"
  printf '[Service]\n# No GPU on this machine.\nEnvironment=INFERD_DEVICE=cpu\n' \
    >"$root/etc/systemd/system/inferd@.service.d/cpu.conf"
fi
mkdir -p "$root/etc/systemd/system/inferd@1.service.d"
printf '[Service]\nEnvironment="INFERD_ARGS=--workers 2"\n' \
  >"$root/etc/systemd/system/inferd@1.service.d/workers.conf"
grep -qx 'workers = 1' "$root/etc/inferd/inferd.toml" || die "the shipped inferd.toml no longer sets workers = 1; this test relies on it"

# --- 4. run both as their units would ---------------------------------------------------------------
declare -A sock
for k in 0 1; do
  listen=$(unit get "inferd@$k.socket" Socket ListenStream)
  fdname=$(unit get "inferd@$k.socket" Socket FileDescriptorName)
  words=$(unit argv "inferd@$k.service")
  mapfile -t argv <<<"$words"
  env_lines=$(unit env "inferd@$k.service")
  mapfile -t env <<<"$env_lines"
  # Files the unit names on / are the staging root's.
  cmd=()
  for word in "${argv[@]}"; do
    case $word in
      /usr/* | /etc/*) cmd+=("$root$word") ;;
      *) cmd+=("$word") ;;
    esac
  done
  setenv=()
  for assignment in "${env[@]}"; do
    [[ -z $assignment ]] || setenv+=(-E "$assignment")
  done
  sock[$k]=$work$listen
  mkdir -p "$(dirname "${sock[$k]}")"
  systemd-socket-activate -l "${sock[$k]}" --fdname="$fdname" "${setenv[@]}" -- \
    "${cmd[@]}" --segment-dir "$shm" >"$work/inferd-$k.log" 2>&1 &
  pids+=($!)
  echo "instances: inferd@$k: ${cmd[*]} --segment-dir $shm (socket-activated on ${sock[$k]}, fd name $fdname)"
done
for k in 0 1; do
  for _ in $(seq 100); do
    [[ -S ${sock[$k]} ]] && break
    sleep 0.05
  done
  [[ -S ${sock[$k]} ]] || { cat "$work/inferd-$k.log" >&2; die "no socket ${sock[$k]}"; }
done

# --- 5. requests, then one exporter -----------------------------------------------------------------
declare -A sent=([0]=1 [1]=2)
for k in 0 1; do
  for ((i = 0; i < sent[$k]; i++)); do
    timeout 30 "$bins/inferctl" --socket "${sock[$k]}" infer >"$work/infer-$k.log" 2>&1 \
      || { cat "$work/infer-$k.log" "$work/inferd-$k.log" >&2; die "inferctl infer on inferd@$k"; }
  done
done
ok "inferd@0 answered ${sent[0]} request(s), inferd@1 ${sent[1]}"

words=$(unit argv inferd-exporter.service)
mapfile -t argv <<<"$words"
[[ ${argv[0]} == /usr/local/bin/inferd-exporter ]] || die "inferd-exporter.service runs ${argv[*]}"
"$root${argv[0]}" "${argv[@]:1}" --segment-dir "$shm" --listen 127.0.0.1:0 >"$work/exporter.log" 2>&1 &
pids+=($!)
url=""
for _ in $(seq 100); do
  url=$(sed -n 's|.*listening on \(http://127\.0\.0\.1:[0-9]*/metrics\).*|\1|p' "$work/exporter.log")
  [[ -z $url ]] || break
  sleep 0.05
done
[[ -n $url ]] || { cat "$work/exporter.log" >&2; die "the exporter did not say where it listens"; }

scrape() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$url"; }
# The value of the one sample of METRIC whose labels include daemon="D" and match REGEX, else "".
sample() {
  local metric=$1 daemon=$2 labels=$3
  grep -E "^$metric\{([^}]*,)?daemon=\"$daemon\"[,}]" "$work/page" | grep -E "$labels" | awk '{ print $NF }'
}
# Requests are counted as they are answered; give the counts a moment to be what was sent.
for _ in $(seq 50); do
  scrape >"$work/page" || true
  [[ $(sample inferd_requests_total inferd-0 'status="ok"') == "${sent[0]}" &&
     $(sample inferd_requests_total inferd-1 'status="ok"') == "${sent[1]}" ]] && break
  sleep 0.1
done
daemons=$(grep -oE '\bdaemon="[^"]*"' "$work/page" | sort -u | tr '\n' ' ')
[[ $daemons == 'daemon="inferd-0" daemon="inferd-1" ' ]] || fail "daemon label values: '$daemons', want inferd-0 and inferd-1 only"
for k in 0 1; do
  d=inferd-$k
  [[ $(sample inferd_up "$d" .) == 1 ]] || fail "inferd_up{daemon=\"$d\"} is '$(sample inferd_up "$d" .)', want 1"
  got=$(sample inferd_requests_total "$d" 'status="ok"')
  [[ $got == "${sent[$k]}" ]] || fail "inferd_requests_total{daemon=\"$d\",status=\"ok\"} is '$got', want ${sent[$k]}"
  got=$(sample inferd_model_info "$d" "$device")
  [[ $got == 1 ]] || fail "inferd_model_info{daemon=\"$d\"} has no $device: $(grep "^inferd_model_info{daemon=\"$d\"" "$work/page")"
done
# workers = 1 from the shared inferd.toml; inferd@1's drop-in gives it --workers 2.
workers_of() { grep -E "^inferd_worker_batches_total\{daemon=\"$1\"[^}]*kind=\"worker\"" "$work/page" | grep -oE 'worker="[^"]*"' | sort -u | wc -l; }
[[ $(workers_of inferd-0) -eq 1 ]] || fail "inferd-0 has $(workers_of inferd-0) workers, want 1 (inferd.toml)"
[[ $(workers_of inferd-1) -eq 2 ]] || fail "inferd-1 has $(workers_of inferd-1) workers, want 2 (its INFERD_ARGS drop-in)"
for k in 0 1; do
  [[ -f $shm/inferd-$k ]] || fail "no segment file inferd-$k"
done

if [[ $failures -gt 0 ]]; then
  echo "instances: the page was:" >&2
  grep -E '^inferd_(up|requests_total|model_info|worker_batches_total)\{' "$work/page" >&2 || cat "$work/page" >&2
  echo "instances: $failures check(s) failed" >&2
  exit 1
fi
ok "one exporter serves both daemons: daemon=\"inferd-0\" (${sent[0]} request, 1 worker) and daemon=\"inferd-1\" (${sent[1]} requests, 2 workers), both up, on $device"
echo "instances: all checks passed"
