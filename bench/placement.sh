#!/usr/bin/env bash
# bench/placement.sh — how much CPU placement moves round-robin throughput on this machine.
#
# Runs the seed example in round-robin mode (2 workers, delay 0, 32 loadgen clients) and the
# limit (2 x limit-server on SO_REUSEPORT), ROUNDS times each, alternating, in these placements:
#   rr free        no pinning: the scheduler places the primary and workers as it likes;
#   rr together    the primary and both workers pinned to CPU 0 (loadgen free);
#   rr apart       the primary on CPU 0, both workers on CPU 1 (loadgen free);
#   rr one-cpu     the cluster and loadgen all on CPU 0 (no cross-CPU wake-ups at all);
#   limit free     the limit, no pinning;
#   limit one-cpu  the limit and loadgen all on CPU 0.
# Prints one line per measurement and a markdown table of the means, with rr as a fraction of
# the limit in the same placement. Pinning uses `taskset`; nothing in forkline pins anything.
# Needs 2+ CPUs.
#
# Knobs: BENCH_SECS=4 BENCH_ROUNDS=3 CARGO_TARGET_DIR. Build first:
#   cargo build --release -p forkline --example cluster -p forkline-loadgen
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${BENCH_SECS:-4}
ROUNDS=${BENCH_ROUNDS:-3}
TARGET=${CARGO_TARGET_DIR:-target}/release
CASES=("rr free" "rr together" "rr apart" "rr one-cpu" "limit free" "limit one-cpu")
log() { echo "[placement] $*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start SERVER PORT: starts the server in its own session; prints its process group id.
start() {
  local server=$1 port=$2
  if [ "$server" = rr ]; then
    FORKLINE_SCHED_POLICY=rr setsid "$TARGET/examples/cluster" "127.0.0.1:$port" 0 2 \
      >/dev/null 2>&1 </dev/null &
  else
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid bash -c '"$0" "$1" 0 & "$0" "$1" 0 & wait' "$TARGET/limit-server" "127.0.0.1:$port" \
      >/dev/null 2>&1 </dev/null &
  fi
  echo $!
}

# measure SERVER PLACEMENT -> prints req/s
measure() {
  local server=$1 placement=$2 port pgid pids pid rps pin_loadgen=()
  port=$(free_port)
  pgid=$(start "$server" "$port")
  for _ in $(seq 1 75); do
    "$TARGET/loadgen" --addr "127.0.0.1:$port" -c 1 -n 1 -d 1s --timeout 1s --json >/dev/null 2>&1 && break
    sleep 0.2
  done
  mapfile -t pids < <(pgrep -g "$pgid")
  case "$placement" in
    together | one-cpu) for pid in "${pids[@]}"; do taskset -a -p -c 0 "$pid" >/dev/null; done ;;
    apart) for pid in "${pids[@]}"; do
        if [ "$pid" = "$pgid" ]; then taskset -a -p -c 0 "$pid" >/dev/null
        else taskset -a -p -c 1 "$pid" >/dev/null; fi
      done ;;
  esac
  [ "$placement" = one-cpu ] && pin_loadgen=(taskset -c 0)
  rps=$("${pin_loadgen[@]}" "$TARGET/loadgen" --addr "127.0.0.1:$port" -c 32 -d "${SECS}s" --json \
    2>/dev/null | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["rps"]))')
  kill -KILL -- "-$pgid" 2>/dev/null || true
  wait "$pgid" 2>/dev/null || true
  echo "$rps"
}

declare -A sum=()
for round in $(seq 1 "$ROUNDS"); do
  for case in "${CASES[@]}"; do
    # shellcheck disable=SC2086 # two words: server and placement
    rps=$(measure $case)
    log "round $round, $case: $rps req/s"
    sum[$case]=$(( ${sum[$case]:-0} + rps ))
  done
done
echo "| server | placement | mean req/s over $ROUNDS rounds | fraction of the limit, same placement |"
echo "| --- | --- | ---: | ---: |"
for case in "${CASES[@]}"; do
  read -r server placement <<<"$case"
  mean=$(( sum[$case] / ROUNDS ))
  # together/apart have no limit row of their own: compare with the limit left free.
  base=${sum["limit $placement"]:-${sum["limit free"]}}
  echo "| $server | $placement | $mean | $(awk -v a="${sum[$case]}" -v b="$base" 'BEGIN { printf "%.2f", a/b }') |"
done
