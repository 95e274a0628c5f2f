#!/usr/bin/env bash
# A program that binds the --listen address itself against the same program given fd 3.
#
# Two clusters side by side, `forkline run --mode steer -w 2 --ipc none -l 127.0.0.1:PORT`, of
# one plain Node HTTP server (bench/node/bind_http.js): in the first each worker binds
# 127.0.0.1:PORT itself (its bind() is trapped and answered with forkline's socket for that
# worker), in the second it does listen({fd: 3}). Both end up accepting on the same kind of
# socket, so the figure checks that the trap costs nothing once the program listens. Each
# round runs, in alternating order, HTTP keep-alive (wrk -t2 -c32) and connection-per-request
# (the same with `Connection: close`) against each cluster. Prints a markdown table with the
# ratios self-binding / fd 3. Fails when a row served nothing, or when the self-binding
# cluster's workers did not get forkline's socket (the log says so for each worker).
#
# Knobs: BENCH_SECS=8 BENCH_ROUNDS=3 BENCH_BUILD=1 BENCH_INSTALL=1 BENCH_PROFILE=release
#   CARGO_TARGET_DIR; BENCH_SMOKE=1: one round of 1 s.
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=${BENCH_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then SECS=${BENCH_SECS:-1} ROUNDS=${BENCH_ROUNDS:-1}; else
  SECS=${BENCH_SECS:-8} ROUNDS=${BENCH_ROUNDS:-3}; fi
PROFILE=${BENCH_PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-target}
FL=${TARGET%/}/$PROFILE/forkline
READY_TIMEOUT=20
log() { echo "[self-bind-bench] $*" >&2; }
die() { log "$*"; exit 1; }

if [ "${BENCH_BUILD:-1}" = 1 ]; then
  case "$PROFILE" in release) flags=(--release) ;; debug) flags=() ;; *) flags=(--profile "$PROFILE") ;; esac
  cargo build "${flags[@]}" -p forkline-cli >&2
fi
[ -x "$FL" ] || die "no $FL: build it with cargo build --release -p forkline-cli"
# shellcheck source=scripts/need.sh
. scripts/need.sh
NEED_INSTALL=${BENCH_INSTALL:-1} need_ensure wrk curl node python3 || die "cannot run without the above"

logs=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
primaries=()
# Stops every cluster: TERM to its process group, then KILL to what is left of its session.
stop_all() {
  local p q deadline=$((SECONDS + 3))
  for p in "${primaries[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  for p in "${primaries[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
    for q in $(pgrep -s "$p" 2>/dev/null); do kill -KILL "$q" 2>/dev/null || true; done
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$logs"
}
trap stop_all EXIT

# start NAME PORT ARG: a steer cluster of bind_http.js ARG on 127.0.0.1:PORT.
start() {
  setsid "$FL" run --mode steer -w 2 --ipc none --name "self-bind-$1-$2" \
    --control "$logs/$1.sock" -l "127.0.0.1:$2" -- node bench/node/bind_http.js "$3" \
    >"$logs/$1.log" 2>&1 </dev/null &
  primaries+=("$!")
}
answers() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/")" = 200 ]; }

self_port=$(free_port); fd_port=$(free_port)
start self "$self_port" "$self_port"
start fd "$fd_port" fd
deadline=$((SECONDS + READY_TIMEOUT))
until answers "$self_port" && answers "$fd_port" &&
  [ "$(grep -c "the worker's own bind joins forkline's socket" "$logs/self.log")" -ge 2 ]; do
  [ "$SECONDS" -lt "$deadline" ] || { cat "$logs/self.log" >&2; die "the clusters did not come up, or the self-binding workers did not get forkline's socket"; }
  sleep 0.1
done
log "self-binding on $self_port, fd 3 on $fd_port"

# Requests/sec of a wrk report on stdin; fails (naming what) when wrk served nothing.
rps() {
  local out r
  out=$(cat)
  r=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  if [ -z "$r" ] || ! awk -v r="$r" 'BEGIN { exit !(r > 0) }'; then
    printf '%s\n' "$out" >&2
    die "$1: wrk served no request"
  fi
  echo "$r"
}
# measure WORKLOAD PORT: req/s.
measure() {
  case "$1" in
    keepalive) wrk -t2 -c32 -d"${SECS}s" "http://127.0.0.1:$2/" | rps "$1 on $2" ;;
    close) wrk -t2 -c32 -d"${SECS}s" -H 'Connection: close' "http://127.0.0.1:$2/" | rps "$1 on $2" ;;
  esac
}

declare -A total=()
rows=()
for round in $(seq 1 "$ROUNDS"); do
  for workload in keepalive close; do
    if [ $((round % 2)) = 1 ]; then
      s=$(measure "$workload" "$self_port"); f=$(measure "$workload" "$fd_port")
    else
      f=$(measure "$workload" "$fd_port"); s=$(measure "$workload" "$self_port")
    fi
    ratio=$(awk -v s="$s" -v f="$f" 'BEGIN{printf "%.2f", s/f}')
    log "round $round $workload: self-binding $s, fd 3 $f ($ratio)"
    rows+=("| $round | $workload | $s | $f | $ratio |")
    total[$workload.s]=$(awk -v t="${total[$workload.s]:-0}" -v x="$s" 'BEGIN{print t+x}')
    total[$workload.f]=$(awk -v t="${total[$workload.f]:-0}" -v x="$f" 'BEGIN{print t+x}')
  done
done
echo "A program binding the --listen address itself vs the same program on fd 3: steer mode, 2 Node workers (bench/node/bind_http.js), wrk 32 connections, ${SECS}s per run, $(nproc) cores:"
echo
echo "| round | workload | self-binding req/s | fd 3 req/s | ratio |"
echo "| ---: | --- | ---: | ---: | ---: |"
printf '%s\n' "${rows[@]}"
for workload in keepalive close; do
  echo "| all | $workload | $(awk -v t="${total[$workload.s]}" -v n="$ROUNDS" 'BEGIN{printf "%.0f", t/n}') | $(awk -v t="${total[$workload.f]}" -v n="$ROUNDS" 'BEGIN{printf "%.0f", t/n}') | $(awk -v s="${total[$workload.s]}" -v f="${total[$workload.f]}" 'BEGIN{printf "%.2f", s/f}') |"
done
