#!/usr/bin/env bash
# Proxy mode against the same workers reached directly, HTTP keep-alive (wrk).
#
# Starts `forkline run --mode proxy -w 2` over a plain Node HTTP server (bench/node/port_http.js,
# which listens on $PORT), finds the two workers' own ports, then alternates, ROUNDS times:
#   proxy:  wrk -t2 -c32 against the public address (every request relayed by the primary);
#   direct: two wrk -t1 -c16 at once, one per worker port (the same processes, no primary).
# Prints a markdown table with the ratio proxy / direct.
#
# Knobs: BENCH_SECS=8 BENCH_ROUNDS=3 BENCH_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${BENCH_SECS:-8}
ROUNDS=${BENCH_ROUNDS:-3}
FL=${CARGO_TARGET_DIR:-target}/release/forkline
log() { echo "[proxy-bench] $*" >&2; }

[ "${BENCH_BUILD:-1}" = 1 ] && cargo build --release -p forkline-cli >&2
command -v wrk >/dev/null || { apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
setsid "$FL" run --mode proxy -w 2 --ready listen -l "127.0.0.1:$port" -- node bench/node/port_http.js \
  >/dev/null 2>&1 &
primary=$!
trap 'kill -TERM -- -$primary 2>/dev/null || true; sleep 0.5; kill -KILL -- -$primary 2>/dev/null || true' EXIT

# Wait (bounded) until the public address answers and both workers listen on their own ports.
worker_ports=()
for _ in $(seq 1 100); do
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
    mapfile -t worker_ports < <(for pid in $(pgrep -P "$primary"); do
      ss -ltnpH 2>/dev/null | grep "pid=$pid," | awk '{print $4}' | sed 's/.*://'
    done | sort -u)
    [ ${#worker_ports[@]} -ge 2 ] && break
  fi
  sleep 0.1
done
[ ${#worker_ports[@]} -ge 2 ] || { log "workers did not come up"; exit 1; }
log "public port $port, worker ports ${worker_ports[*]}"

rps() { awk '/Requests\/sec/ {print $2}'; }
proxy_total=0; direct_total=0
rows=()
for round in $(seq 1 "$ROUNDS"); do
  p=$(wrk -t2 -c32 -d"${SECS}s" "http://127.0.0.1:$port/" | rps)
  a=$(mktemp); b=$(mktemp)
  wrk -t1 -c16 -d"${SECS}s" "http://127.0.0.1:${worker_ports[0]}/" >"$a" &
  first=$!
  wrk -t1 -c16 -d"${SECS}s" "http://127.0.0.1:${worker_ports[1]}/" >"$b"
  wait "$first"
  d=$(awk -v x="$(rps <"$a")" -v y="$(rps <"$b")" 'BEGIN{print x+y}')
  rm -f "$a" "$b"
  rows+=("| $round | $p | $d | $(awk -v p="$p" -v d="$d" 'BEGIN{printf "%.2f", p/d}') |")
  proxy_total=$(awk -v t="$proxy_total" -v x="$p" 'BEGIN{print t+x}')
  direct_total=$(awk -v t="$direct_total" -v x="$d" 'BEGIN{print t+x}')
done
rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$primary/status")
echo "Proxy mode, HTTP keep-alive, 2 Node workers (bench/node/port_http.js), wrk 32 connections, ${SECS}s per run, $(nproc) cores:"
echo
echo "| round | through the proxy req/s | direct to the same workers req/s | ratio |"
echo "| ---: | ---: | ---: | ---: |"
printf '%s\n' "${rows[@]}"
echo "| mean | $(awk -v t="$proxy_total" -v n="$ROUNDS" 'BEGIN{printf "%.0f", t/n}') | $(awk -v t="$direct_total" -v n="$ROUNDS" 'BEGIN{printf "%.0f", t/n}') | $(awk -v p="$proxy_total" -v d="$direct_total" 'BEGIN{printf "%.2f", p/d}') |"
echo
echo "Primary RSS after the runs: ${rss} MiB."
