#!/usr/bin/env bash
# bench/scaling.sh — connections/s against the number of workers W (1, 2, 4, ... up to the
# cores), for the limit (W x limit-server), every forkline mode (steer, reuseport, shared,
# round-robin, proxy) and Node's cluster (rr, none), with the servers pinned to cores 0..W-1
# and the load generator on the others; the CPU per connection of the primary and of the
# workers apart; a projection of the curve beyond this machine's cores from those CPU figures;
# an HTTP keep-alive section (wrk) with the per-worker balance; a Markdown table
# (bench/out/scaling-<stamp>.md), raw JSON, and a plot (bench/scaling.png).
#
# On a machine with many cores the same script measures the whole curve; on a 2-core one it
# measures W = 1 and 2 and projects the rest (the method is in bench/scaling.py and
# bench/RESULTS.md).
#
# Knobs (environment): SCALE_WORKERS="1 2 4 ..." SCALE_CONFIGS="limit steer reuseport shared rr rr-2acc
#   proxy node-rr node-none" SCALE_ROUNDS=3 SCALE_SECS=5 SCALE_CONCURRENCY=32 SCALE_DELAY=0
#   SCALE_PROJECT="1 2 4 8 16 32" SCALE_HTTP=1 SCALE_HTTP_CONFIGS="http-steer http-reuseport
#   http-shared http-rr node-http-rr node-http-none" SCALE_OUT=bench/out
#   SCALE_PLOT=bench/scaling.png BENCH_BUILD=1 BENCH_INSTALL=1 (wrk and matplotlib, with
#   scripts/need.sh, when missing) BENCH_PROFILE=release (or debug) CARGO_TARGET_DIR;
#   BENCH_SMOKE=1: a check that the script works end to end (bench/scaling.py says what it runs).
# Steer mode needs BPF (root or CAP_BPF); without it the steer rows measure its fallback.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf '[scaling] %s\n' "$*" >&2; }

for tool in taskset python3; do
  command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }
done

PROFILE=${BENCH_PROFILE:-release}
# The cargo flag that builds into target/$PROFILE (cargo calls the debug profile `dev`).
case "$PROFILE" in release) CARGO_PROFILE=(--release) ;; debug) CARGO_PROFILE=() ;; *) CARGO_PROFILE=(--profile "$PROFILE") ;; esac
if [ "${BENCH_BUILD:-1}" = 1 ]; then
  log "building loadgen, limit-server, the forkline CLI and the examples ($PROFILE)"
  cargo build "${CARGO_PROFILE[@]}" -p forkline-loadgen -p forkline-cli
  cargo build "${CARGO_PROFILE[@]}" -p forkline --example cluster --example http
fi

# shellcheck source=scripts/need.sh
. "$ROOT/scripts/need.sh"
export NEED_INSTALL=${BENCH_INSTALL:-1}
if [ "${SCALE_HTTP:-1}" = 1 ]; then
  need_ensure wrk || log "wrk is not available: the HTTP section will be skipped"
fi
need_ensure matplotlib || log "matplotlib is not available: no plot"

exec python3 "$ROOT/bench/scaling.py"
