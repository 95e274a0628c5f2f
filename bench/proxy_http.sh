#!/usr/bin/env bash
# Proxy mode against the same workers reached directly, HTTP keep-alive (wrk).
#
# Starts `forkline run --mode proxy -w 2` over a plain Node HTTP server (bench/node/port_http.js,
# which listens on $PORT), finds the two workers' own ports, then alternates, ROUNDS times:
#   proxy:  wrk -t2 -c32 against the public address (every request relayed by the primary);
#   direct: two wrk -t1 -c16 at once, one per worker port (the same processes, no primary).
# Prints a markdown table with the ratio proxy / direct. A run in which a side served no
# request fails.
#
# The workers are the processes of the primary's session whose environment has
# FORKLINE_WORKER_ID (forkline sets it, with PORT, for every worker it starts); the primary's
# other children, such as its keeper (a fork of the primary that listens on nothing), have none.
#
# Knobs: BENCH_SECS=8 BENCH_ROUNDS=3 BENCH_BUILD=1 BENCH_INSTALL=1 (wrk, with scripts/need.sh)
#   BENCH_PROFILE=release (or debug: which build of target/ to run) CARGO_TARGET_DIR;
#   BENCH_SMOKE=1: one round of 1 s, to check that the script still works end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=${BENCH_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then SECS=${BENCH_SECS:-1} ROUNDS=${BENCH_ROUNDS:-1}; else
  SECS=${BENCH_SECS:-8} ROUNDS=${BENCH_ROUNDS:-3}; fi
PROFILE=${BENCH_PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-target}
FL=${TARGET%/}/$PROFILE/forkline
WORKERS=2
READY_TIMEOUT=20 # seconds the cluster gets to come up
log() { echo "[proxy-bench] $*" >&2; }
die() { log "$*"; exit 1; }

if [ "${BENCH_BUILD:-1}" = 1 ]; then
  # The cargo flag that builds into target/$PROFILE (cargo calls the debug profile `dev`).
  case "$PROFILE" in release) flags=(--release) ;; debug) flags=() ;; *) flags=(--profile "$PROFILE") ;; esac
  cargo build "${flags[@]}" -p forkline-cli >&2
fi
[ -x "$FL" ] || die "no $FL: build it with cargo build --release -p forkline-cli"
# shellcheck source=scripts/need.sh
. scripts/need.sh
NEED_INSTALL=${BENCH_INSTALL:-1} need_ensure wrk curl ss node python3 ||
  die "cannot run without the above"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
setsid "$FL" run --mode proxy -w "$WORKERS" --ready listen -l "127.0.0.1:$port" -- \
  node bench/node/port_http.js >/dev/null 2>&1 </dev/null &
primary=$!

# True while a process of session SID is alive (a zombie waiting to be reaped does not count).
session_alive() {
  local p st
  for p in $(pgrep -s "$1" 2>/dev/null); do
    st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ] && return 0
  done
  return 1
}

# Stops the cluster: TERM to the primary's process group (the primary stops its workers, each
# in a process group of its own); whatever of its session is left after 3 s is KILLed by pid.
stop_cluster() {
  local deadline=$((SECONDS + 3)) p
  kill -TERM -- "-$primary" 2>/dev/null || true
  while session_alive "$primary" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
  for p in $(pgrep -s "$primary" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  wait "$primary" 2>/dev/null || true
}
trap stop_cluster EXIT

# Prints the PORT of every worker of the primary's session, one a line (sorted, unique).
worker_ports() {
  local pid env
  for pid in $(pgrep -s "$primary" || true); do
    env=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null) || continue
    grep -q '^FORKLINE_WORKER_ID=' <<<"$env" || continue
    sed -n 's/^PORT=//p' <<<"$env"
  done | sort -un
}

# 200 from http://127.0.0.1:PORT/ ?
answers() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/")" = 200 ]; }

# Wait, with a deadline, until the public address answers and every worker answers on its port.
worker_ports=()
deadline=$((SECONDS + READY_TIMEOUT))
while :; do
  kill -0 "$primary" 2>/dev/null || die "forkline exited before its workers came up"
  if answers "$port"; then
    mapfile -t worker_ports < <(worker_ports)
    up=0
    for wp in "${worker_ports[@]}"; do answers "$wp" && up=$((up + 1)); done
    [ "$up" -ge "$WORKERS" ] && break
  fi
  [ "$SECONDS" -lt "$deadline" ] ||
    die "workers did not come up within ${READY_TIMEOUT}s (worker ports found: ${worker_ports[*]:-none})"
  sleep 0.1
done
[ ${#worker_ports[@]} -eq "$WORKERS" ] || die "expected $WORKERS worker ports, found: ${worker_ports[*]}"
log "public port $port, worker ports ${worker_ports[*]}"

# Requests/sec of a wrk report on stdin; fails (naming what) when wrk served nothing.
rps() {
  local what=$1 out r
  out=$(cat)
  r=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  if [ -z "$r" ] || ! awk -v r="$r" 'BEGIN { exit !(r > 0) }'; then
    printf '%s\n' "$out" >&2
    die "$what: wrk served no request"
  fi
  echo "$r"
}

proxy_total=0; direct_total=0
rows=()
a=$(mktemp); b=$(mktemp)
trap 'rm -f "$a" "$b"; stop_cluster' EXIT
for round in $(seq 1 "$ROUNDS"); do
  p=$(wrk -t2 -c32 -d"${SECS}s" "http://127.0.0.1:$port/" | rps "through the proxy")
  wrk -t1 -c16 -d"${SECS}s" "http://127.0.0.1:${worker_ports[0]}/" >"$a" &
  first=$!
  wrk -t1 -c16 -d"${SECS}s" "http://127.0.0.1:${worker_ports[1]}/" >"$b"
  wait "$first"
  x=$(rps "direct to worker port ${worker_ports[0]}" <"$a")
  y=$(rps "direct to worker port ${worker_ports[1]}" <"$b")
  d=$(awk -v x="$x" -v y="$y" 'BEGIN{print x+y}')
  log "round $round: proxy $p req/s, direct $d req/s"
  rows+=("| $round | $p | $d | $(awk -v p="$p" -v d="$d" 'BEGIN{printf "%.2f", p/d}') |")
  proxy_total=$(awk -v t="$proxy_total" -v x="$p" 'BEGIN{print t+x}')
  direct_total=$(awk -v t="$direct_total" -v x="$d" 'BEGIN{print t+x}')
done
rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$primary/status")
echo "Proxy mode, HTTP keep-alive, $WORKERS Node workers (bench/node/port_http.js), wrk 32 connections, ${SECS}s per run, $(nproc) cores:"
echo
echo "| round | through the proxy req/s | direct to the same workers req/s | ratio |"
echo "| ---: | ---: | ---: | ---: |"
printf '%s\n' "${rows[@]}"
echo "| mean | $(awk -v t="$proxy_total" -v n="$ROUNDS" 'BEGIN{printf "%.0f", t/n}') | $(awk -v t="$direct_total" -v n="$ROUNDS" 'BEGIN{printf "%.0f", t/n}') | $(awk -v p="$proxy_total" -v d="$direct_total" 'BEGIN{printf "%.2f", p/d}') |"
echo
echo "Primary RSS after the runs: ${rss} MiB."
