#!/usr/bin/env bash
# Runs the whole test suite (scripts/test.sh) ROUNDS times (default 5) while every core is kept busy by one
# spinning process per core, the way a loaded CI machine is. Prints one line per round and a
# total; exits 1 if any round failed. Logs of failed rounds stay in $LOG_DIR.
#
#   scripts/loaded-test.sh [ROUNDS]
set -uo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-5}
cores=$(nproc)
log_dir=${LOG_DIR:-$(mktemp -d -t forkline-loaded-XXXXXX)}

# What the suite needs (installed where it can be, as scripts/test.sh does), then build first,
# unloaded: the rounds measure the tests, not the compiler.
# shellcheck source=scripts/need.sh
. scripts/need.sh
need_ensure tests || { echo "loaded-test.sh: the tests cannot run without the above" >&2; exit 1; }
cargo test --workspace --no-run -q 2>&1 | tail -n 3

spinners=()
stop_spinners() {
    for pid in "${spinners[@]}"; do kill "$pid" 2>/dev/null; done
    wait "${spinners[@]}" 2>/dev/null
}
trap stop_spinners EXIT
for _ in $(seq "$cores"); do
    ( while :; do :; done ) &
    spinners+=("$!")
done
echo "loaded: ${#spinners[@]} spinning processes on $cores cores; logs in $log_dir"

failed=0
for round in $(seq "$rounds"); do
    log="$log_dir/round-$round.log"
    start=$(date +%s)
    # The README's test command (its last line is the total: "tests: N passed, M failed").
    if scripts/test.sh --no-fail-fast >"$log" 2>&1; then result=passed; else result=FAILED; fi
    counts=$(sed -n 's/^tests: //p' "$log" | tail -n 1)
    echo "round $round: $result in $(( $(date +%s) - start )) s ($counts)"
    if [ "$result" = FAILED ]; then
        failed=$((failed + 1))
        grep -E '^test .* FAILED$|panicked at' "$log" | head -n 20
    else
        rm -f "$log"
    fi
done
echo "$((rounds - failed)) of $rounds rounds passed under load"
[ "$failed" -eq 0 ]
