#!/usr/bin/env bash
# bench/compare_builds.sh — two builds of the seed example (or one build with two settings),
# interleaved A B, B A, A B, ... on the seed workload, so that the machine's drift hits both alike.
#
#   bash bench/compare_builds.sh A_BIN B_BIN          # e.g. a copy of an older examples/cluster
#   A_ENV="FORKLINE_ACCEPT_COALESCE_US=0" B_ENV="FORKLINE_ACCEPT_COALESCE_US=500" \
#     bash bench/compare_builds.sh target/release/examples/cluster target/release/examples/cluster
#
# Knobs (environment): ROUNDS=6 SECS=4 CONCURRENCY=32 WORKERS=2 DELAY_MS=0 MODE=rr
#   A_ENV / B_ENV: extra VAR=value words for side A / B.
# Prints one line per round and the mean req/s and p50/p99 latency of each side, with B/A.
# Every server runs in its own process group, killed after its run; traffic stays on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOADGEN=${CARGO_TARGET_DIR:-$ROOT/target}/release/loadgen
A_BIN=${1:?usage: compare_builds.sh A_BIN B_BIN}
B_BIN=${2:?usage: compare_builds.sh A_BIN B_BIN}
ROUNDS=${ROUNDS:-6}
SECS=${SECS:-4}
CONCURRENCY=${CONCURRENCY:-32}
WORKERS=${WORKERS:-2}
DELAY_MS=${DELAY_MS:-0}
MODE=${MODE:-rr}
[ -x "$LOADGEN" ] || { echo "no $LOADGEN: cargo build --release -p forkline-loadgen" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# measure BIN "ENV WORDS": prints "rps p50 p99" of one run.
measure() {
  local bin=$1 extra=$2 port pgid
  port=$(free_port)
  # shellcheck disable=SC2086 # the extra words are VAR=value pairs
  env FORKLINE_SCHED_POLICY="$MODE" $extra setsid "$bin" "127.0.0.1:$port" "$DELAY_MS" "$WORKERS" \
    >/dev/null 2>&1 </dev/null &
  pgid=$!
  for _ in $(seq 50); do
    "$LOADGEN" --addr "127.0.0.1:$port" -c 1 -n 1 -d 1s --timeout 1s >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$LOADGEN" --addr "127.0.0.1:$port" -c "$CONCURRENCY" -d 1s >/dev/null 2>&1 || true
  "$LOADGEN" --addr "127.0.0.1:$port" -c "$CONCURRENCY" -d "${SECS}s" --workers "$WORKERS" --json \
    | python3 -c 'import json,sys; d=json.loads(sys.stdin.read().splitlines()[-1]); l=d["latency_ms"]; print(round(d["rps"]), l["p50"], l["p99"])'
  kill -9 -- "-$pgid" 2>/dev/null || true
  wait "$pgid" 2>/dev/null || true
}

results=()
for round in $(seq "$ROUNDS"); do
  # A B, then B A: a drift during a round favours neither side.
  if [ $((round % 2)) = 1 ]; then
    a=$(measure "$A_BIN" "${A_ENV:-}")
    b=$(measure "$B_BIN" "${B_ENV:-}")
  else
    b=$(measure "$B_BIN" "${B_ENV:-}")
    a=$(measure "$A_BIN" "${A_ENV:-}")
  fi
  echo "round $round: A $a | B $b   (req/s p50 ms p99 ms)"
  results+=("$a $b")
done
printf '%s\n' "${results[@]}" | awk '
  { ar += $1; ap += $2; aq += $3; br += $4; bp += $5; bq += $6; n++ }
  END { printf "mean A: %d req/s, p50 %.3f ms, p99 %.3f ms\n", ar/n, ap/n, aq/n;
        printf "mean B: %d req/s, p50 %.3f ms, p99 %.3f ms\n", br/n, bp/n, bq/n;
        printf "B/A req/s: %.2f\n", br/ar }'
