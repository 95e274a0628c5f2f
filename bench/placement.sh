#!/usr/bin/env bash
# bench/placement.sh — how much CPU placement moves round-robin throughput on this machine.
#
# Runs the seed example in round-robin mode (2 workers, delay 0, 32 loadgen clients) ROUNDS
# times in each of three placements, alternating:
#   free      no pinning: the kernel scheduler places the primary and workers as it likes;
#   together  the primary and both workers pinned to CPU 0 (loadgen free);
#   apart     the primary on CPU 0, the workers both on CPU 1 (loadgen free).
# Prints one line per measurement and a markdown table of the means. Pinning is applied with
# `taskset` after the cluster is up; nothing in forkline pins anything. Needs 2+ CPUs.
#
# Knobs: BENCH_SECS=4 BENCH_ROUNDS=3 CARGO_TARGET_DIR. Build first:
#   cargo build --release -p forkline --example cluster -p forkline-loadgen
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${BENCH_SECS:-4}
ROUNDS=${BENCH_ROUNDS:-3}
TARGET=${CARGO_TARGET_DIR:-target}/release
log() { echo "[placement] $*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# measure PLACEMENT -> prints req/s
measure() {
  local placement=$1 port pgid workers rps
  port=$(free_port)
  FORKLINE_SCHED_POLICY=rr setsid "$TARGET/examples/cluster" "127.0.0.1:$port" 0 2 >/dev/null 2>&1 &
  pgid=$!
  for _ in $(seq 1 75); do
    "$TARGET/loadgen" --addr "127.0.0.1:$port" -c 1 -n 1 -d 1s --timeout 1s --json >/dev/null 2>&1 && break
    sleep 0.2
  done
  mapfile -t workers < <(pgrep -P "$pgid")
  case "$placement" in
    together) taskset -a -p -c 0 "$pgid" >/dev/null
      for w in "${workers[@]}"; do taskset -a -p -c 0 "$w" >/dev/null; done ;;
    apart) taskset -a -p -c 0 "$pgid" >/dev/null
      for w in "${workers[@]}"; do taskset -a -p -c 1 "$w" >/dev/null; done ;;
  esac
  rps=$("$TARGET/loadgen" --addr "127.0.0.1:$port" -c 32 -d "${SECS}s" --json 2>/dev/null |
    python3 -c 'import json,sys; print(int(json.load(sys.stdin)["rps"]))')
  kill -KILL -- "-$pgid" 2>/dev/null || true
  wait "$pgid" 2>/dev/null || true
  echo "$rps"
}

declare -A sum=()
for round in $(seq 1 "$ROUNDS"); do
  for placement in free together apart; do
    rps=$(measure "$placement")
    log "round $round $placement: $rps req/s"
    sum[$placement]=$(( ${sum[$placement]:-0} + rps ))
  done
done
echo "| placement | mean req/s over $ROUNDS rounds |"
echo "| --- | ---: |"
for placement in free together apart; do
  echo "| $placement | $(( sum[$placement] / ROUNDS )) |"
done
