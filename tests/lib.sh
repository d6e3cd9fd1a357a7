# Shell pieces shared by the test scripts that start real processes (tests/promql/run.sh,
# tests/remote_write/run.sh, tests/alertmanager/run.sh). Source it; it defines functions only.

# stop_pids PID...: SIGTERM to all at once, then each gets 15 s to drain and exit before SIGKILL.
stop_pids() {
  local pid
  for pid in "$@"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    wait_or_kill "$pid"
  done
}

# stop_pids_in_turn PID...: one after another, each stopped (15 s, then SIGKILL) before the next
# is signalled: for servers that must flush to one started before them.
stop_pids_in_turn() {
  local pid
  for pid in "$@"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait_or_kill "$pid"
  done
}

wait_or_kill() {
  for _ in $(seq 150); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# show_logs DIR: the last 20 lines of every non-empty DIR/*.log, on stderr (after a failure).
show_logs() {
  local log
  for log in "$1"/*.log; do
    [[ -s $log ]] || continue
    echo "---- last lines of $(basename "$log")" >&2
    tail -n 20 "$log" >&2
  done
}
