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
# Knobs: BENCH_SECS=4 BENCH_ROUNDS=3 BENCH_PROFILE=release (or debug) CARGO_TARGET_DIR;
#   BENCH_SMOKE=1: one round of 1 s per case, to check that the script works. A server that does
#   not answer within 15 s, or a measurement that served nothing, fails the script. Build first:
#   cargo build --release -p forkline --example cluster -p forkline-loadgen
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${BENCH_SMOKE:-0}" = 1 ]; then SECS=${BENCH_SECS:-1} ROUNDS=${BENCH_ROUNDS:-1}; else
  SECS=${BENCH_SECS:-4} ROUNDS=${BENCH_ROUNDS:-3}; fi
TARGET=${CARGO_TARGET_DIR:-target}
TARGET=${TARGET%/}/${BENCH_PROFILE:-release}
READY_TIMEOUT=15
CASES=("rr free" "rr together" "rr apart" "rr one-cpu" "limit free" "limit one-cpu")
log() { echo "[placement] $*" >&2; }
die() { log "$*"; exit 1; }
[ "$(nproc)" -ge 2 ] || die "needs 2 or more CPUs"
for bin in "$TARGET/loadgen" "$TARGET/limit-server" "$TARGET/examples/cluster"; do
  [ -x "$bin" ] || die "no $bin: cargo build --release -p forkline --example cluster -p forkline-loadgen"
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The server running now (its session id), killed on any exit.
SID=""
stop_server() {
  local p
  [ -n "$SID" ] || return 0
  kill -KILL -- "-$SID" 2>/dev/null || true
  for p in $(pgrep -s "$SID" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  wait "$SID" 2>/dev/null || true
  SID=""
}
trap stop_server EXIT

# start SERVER PORT: starts the server in its own session; sets SID.
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
  SID=$!
}

# measure SERVER PLACEMENT: sets RPS.
measure() {
  local server=$1 placement=$2 port pids pid json deadline pin_loadgen=()
  port=$(free_port)
  start "$server" "$port"
  deadline=$((SECONDS + READY_TIMEOUT))
  until "$TARGET/loadgen" --addr "127.0.0.1:$port" -c 1 -n 1 -d 1s --timeout 1s >/dev/null 2>&1; do
    kill -0 "$SID" 2>/dev/null || die "$server exited before it answered"
    [ "$SECONDS" -lt "$deadline" ] || die "$server did not answer on 127.0.0.1:$port within ${READY_TIMEOUT}s"
    sleep 0.1
  done
  # Every process of the session: the primary (or limit's bash) and the workers, which forkline
  # starts in process groups of their own.
  mapfile -t pids < <(pgrep -s "$SID")
  case "$placement" in
    together | one-cpu) for pid in "${pids[@]}"; do taskset -a -p -c 0 "$pid" >/dev/null; done ;;
    apart) for pid in "${pids[@]}"; do
        if [ "$pid" = "$SID" ]; then taskset -a -p -c 0 "$pid" >/dev/null
        else taskset -a -p -c 1 "$pid" >/dev/null; fi
      done ;;
  esac
  [ "$placement" = one-cpu ] && pin_loadgen=(taskset -c 0)
  json=$("${pin_loadgen[@]}" "$TARGET/loadgen" --addr "127.0.0.1:$port" -c 32 -d "${SECS}s" --json) ||
    die "$server $placement: loadgen failed: ${json:-no output}"
  stop_server
  RPS=$(python3 -c 'import json,sys; print(int(json.loads(sys.stdin.read().splitlines()[-1])["rps"]))' <<<"$json")
  [ "$RPS" -gt 0 ] || die "$server $placement served no request: $json"
}

declare -A sum=()
for round in $(seq 1 "$ROUNDS"); do
  for case in "${CASES[@]}"; do
    # shellcheck disable=SC2086 # two words: server and placement
    measure $case
    log "round $round, $case: $RPS req/s"
    sum[$case]=$(( ${sum[$case]:-0} + RPS ))
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
