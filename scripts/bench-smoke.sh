#!/usr/bin/env bash
# scripts/bench-smoke.sh — every script under bench/ once, in its smoke mode (BENCH_SMOKE=1: one
# short round, a second or two of load, 1–2 workers), so that none of them can rot unnoticed. A
# smoke run measures nothing worth keeping; it checks that each script still runs end to end and
# that what it measures really served (a script that served nothing fails).
#
#   scripts/bench-smoke.sh                 # all of them
#   scripts/bench-smoke.sh run placement   # some of them: run compare_builds cpu_per_conn
#                                          #   kill_under_load node_cluster placement proxy_http
#                                          #   scaling self_bind
#
# It builds what the scripts run in the debug profile (the build `cargo test` leaves behind
# mostly; BENCH_PROFILE=release to smoke the release build instead), and installs what they
# need with scripts/need.sh (group `bench`: wrk, curl, matplotlib, ...). Logs go to a temporary
# directory, kept (and named) when a script fails. Prints one line per script with its time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/need.sh
. scripts/need.sh

ALL=(run compare_builds cpu_per_conn kill_under_load node_cluster placement proxy_http scaling self_bind)
if [ $# -gt 0 ]; then SELECTED=("$@"); else SELECTED=("${ALL[@]}"); fi
for name in "${SELECTED[@]}"; do
  case " ${ALL[*]} " in *" $name "*) ;; *) echo "bench-smoke: unknown script '$name' (${ALL[*]})" >&2; exit 2 ;; esac
done

need_ensure bench || { echo "bench-smoke: the benchmarks cannot run without the above" >&2; exit 1; }

PROFILE=${BENCH_PROFILE:-debug}
# The cargo flag that builds into target/$PROFILE (cargo calls the debug profile `dev`).
case "$PROFILE" in release) CARGO_PROFILE=(--release) ;; debug) CARGO_PROFILE=() ;; *) CARGO_PROFILE=(--profile "$PROFILE") ;; esac
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TARGET=${TARGET%/}/$PROFILE
build_start=$SECONDS
# loadgen, limit-server, ops-server; the seed and HTTP examples and the testbed; the CLI.
cargo build "${CARGO_PROFILE[@]}" -p forkline-loadgen -p forkline -p forkline-cli \
  --features forkline-loadgen/ops --bins --examples
echo "bench-smoke: built ($PROFILE) in $((SECONDS - build_start)) s"

export BENCH_SMOKE=1 BENCH_PROFILE="$PROFILE" BENCH_BUILD=0 BENCH_INSTALL=0
OUT=$(mktemp -d -t forkline-bench-smoke-XXXXXX)
export BENCH_OUT=$OUT/run SCALE_OUT=$OUT/scaling

# One script's smoke run.
smoke_run() {
  case "$1" in
    run) bash bench/run.sh ;;
    compare_builds)
      A_ENV=FORKLINE_ACCEPT_COALESCE_US=0 B_ENV=FORKLINE_ACCEPT_COALESCE_US=500 \
        bash bench/compare_builds.sh "$TARGET/examples/cluster" "$TARGET/examples/cluster" ;;
    cpu_per_conn)
      BASE_CLUSTER=$TARGET/examples/cluster python3 bench/cpu_per_conn.py \
        limit rr rr-nocoalesce shared reuseport rr-2acc rr-base ops-off ops-on ;;
    kill_under_load) python3 bench/kill_under_load.py ;;
    node_cluster) bash bench/node_cluster.sh ;;
    self_bind) bash bench/self_bind.sh ;;
    placement) bash bench/placement.sh ;;
    proxy_http) bash bench/proxy_http.sh ;;
    scaling) bash bench/scaling.sh ;;
  esac
}

passed=0 failed=0 skipped=0 failures=()
start_all=$SECONDS
for name in "${SELECTED[@]}"; do
  log=$OUT/$name.log
  if [ "$name" = kill_under_load ] && [ "$(id -u)" != 0 ]; then
    echo "bench-smoke: $name skipped: it needs root (a network namespace of its own, unshare -n)"
    skipped=$((skipped + 1))
    continue
  fi
  start=$SECONDS
  if smoke_run "$name" >"$log" 2>&1 </dev/null; then
    echo "bench-smoke: $name ok in $((SECONDS - start)) s"
    passed=$((passed + 1))
  else
    status=$?
    echo "bench-smoke: $name FAILED (exit $status) in $((SECONDS - start)) s; the end of $log:"
    tail -n 30 "$log" | sed 's/^/    /'
    failed=$((failed + 1))
    failures+=("$name")
  fi
done
echo "bench-smoke: $passed of ${#SELECTED[@]} scripts ran, $failed failed, $skipped skipped, in $((SECONDS - start_all)) s (builds excluded)"
if [ "$failed" -gt 0 ]; then
  echo "bench-smoke: failed: ${failures[*]}; logs kept in $OUT" >&2
  exit 1
fi
rm -rf "$OUT"
