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
#   BENCH_PROFILE=release (or debug: whose loadgen runs) CARGO_TARGET_DIR.
#   BENCH_SMOKE=1: two rounds (A B, B A) of 1 s without warm-up, to check the script works.
# Prints one line per round and the mean req/s and p50/p99 latency of each side, with B/A. A
# server that does not answer within 15 s, or a run that served nothing, fails the script.
# Every server runs in its own session, killed after its run; traffic stays on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOADGEN=${CARGO_TARGET_DIR:-$ROOT/target}/${BENCH_PROFILE:-release}/loadgen
A_BIN=${1:?usage: compare_builds.sh A_BIN B_BIN}
B_BIN=${2:?usage: compare_builds.sh A_BIN B_BIN}
if [ "${BENCH_SMOKE:-0}" = 1 ]; then
  ROUNDS=${ROUNDS:-2} SECS=${SECS:-1} WARMUP=0
else
  ROUNDS=${ROUNDS:-6} SECS=${SECS:-4} WARMUP=1
fi
CONCURRENCY=${CONCURRENCY:-32}
WORKERS=${WORKERS:-2}
DELAY_MS=${DELAY_MS:-0}
MODE=${MODE:-rr}
READY_TIMEOUT=15
die() { echo "compare_builds.sh: $*" >&2; exit 1; }
[ -x "$LOADGEN" ] || die "no $LOADGEN: cargo build --release -p forkline-loadgen"
for bin in "$A_BIN" "$B_BIN"; do [ -x "$bin" ] || die "no $bin (not built?)"; done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The server running now (its session id), stopped on any exit.
SID=""
stop_server() {
  local p
  [ -n "$SID" ] || return 0
  # The whole session: the primary's group, and its workers, each in a group of their own.
  kill -KILL -- "-$SID" 2>/dev/null || true
  for p in $(pgrep -s "$SID" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  wait "$SID" 2>/dev/null || true
  SID=""
}
trap stop_server EXIT

# measure BIN "ENV WORDS": sets RESULT to "rps p50 p99" of one run.
measure() {
  local bin=$1 extra=$2 port json deadline what
  what="$1${2:+ ($2)}"
  port=$(free_port)
  # shellcheck disable=SC2086 # the extra words are VAR=value pairs
  env FORKLINE_SCHED_POLICY="$MODE" $extra setsid "$bin" "127.0.0.1:$port" "$DELAY_MS" "$WORKERS" \
    >/dev/null 2>&1 </dev/null &
  SID=$!
  deadline=$((SECONDS + READY_TIMEOUT))
  until "$LOADGEN" --addr "127.0.0.1:$port" -c 1 -n 1 -d 1s --timeout 1s >/dev/null 2>&1; do
    kill -0 "$SID" 2>/dev/null || die "$what exited before it answered"
    [ "$SECONDS" -lt "$deadline" ] || die "$what did not answer on 127.0.0.1:$port within ${READY_TIMEOUT}s"
    sleep 0.1
  done
  if [ "$WARMUP" != 0 ]; then
    "$LOADGEN" --addr "127.0.0.1:$port" -c "$CONCURRENCY" -d "${WARMUP}s" >/dev/null 2>&1 || true
  fi
  json=$("$LOADGEN" --addr "127.0.0.1:$port" -c "$CONCURRENCY" -d "${SECS}s" --workers "$WORKERS" --json) ||
    die "$what: loadgen failed: ${json:-no output}"
  stop_server
  RESULT=$(python3 -c 'import json,sys; d=json.loads(sys.stdin.read().splitlines()[-1]); l=d["latency_ms"]; print(round(d["rps"]), l["p50"], l["p99"])' <<<"$json")
  [ "${RESULT%% *}" -gt 0 ] || die "$what served no request: $json"
}

results=()
for round in $(seq "$ROUNDS"); do
  # A B, then B A: a drift during a round favours neither side.
  if [ $((round % 2)) = 1 ]; then
    measure "$A_BIN" "${A_ENV:-}"; a=$RESULT
    measure "$B_BIN" "${B_ENV:-}"; b=$RESULT
  else
    measure "$B_BIN" "${B_ENV:-}"; b=$RESULT
    measure "$A_BIN" "${A_ENV:-}"; a=$RESULT
  fi
  echo "round $round: A $a | B $b   (req/s p50 ms p99 ms)"
  results+=("$a $b")
done
printf '%s\n' "${results[@]}" | awk '
  { ar += $1; ap += $2; aq += $3; br += $4; bp += $5; bq += $6; n++ }
  END { printf "mean A: %d req/s, p50 %.3f ms, p99 %.3f ms\n", ar/n, ap/n, aq/n;
        printf "mean B: %d req/s, p50 %.3f ms, p99 %.3f ms\n", br/n, bp/n, bq/n;
        printf "B/A req/s: %.2f\n", br/ar }'
