#!/usr/bin/env bash
# bench/proxy_http.sh — proxy mode, with and without the relay, against the same workers reached
# directly (issue #20). HTTP, wrk.
#
# Starts two proxy-mode clusters of the same program and worker count, side by side, each with
# its own --name and --control socket:
#   K: forkline run --mode proxy -w 2 --ready listen -l 127.0.0.1:PK -- node bench/node/port_http.js
#      (kernel steering, the default: an SK_LOOKUP program sends each new connection for PK
#      straight to a worker's own listener on its $PORT; the primary relays only what it misses)
#   R: the same with --proxy-kernel=false on 127.0.0.1:PR (the primary relays every connection)
# finds K's two workers' own ports, and checks with `forkline status --json` that K's `steering`
# is `proxy-kernel` (and R's `proxy-relay`). If K is not kernel-steered (BPF refused: no
# CAP_BPF, a kernel before 5.9, ...) it says so loudly, with the primary's own log line saying
# why, and marks the kernel row RELAYED everywhere; with BENCH_REQUIRE_KERNEL=1 the run (smoke
# or not) then fails, after its tables.
#
# Rows, each measured once per round and workload, in an order rotated by one per round:
#   kernel:  wrk -t2 -c32 against PK (K's workers, reached through the kernel's steering)
#   relay:   wrk -t2 -c32 against PR (R's workers, every connection relayed by R's primary)
#   direct:  two wrk -t1 -c16 at once, one per K worker's own port (the same processes as the
#            kernel row, no primary at all)
# Workloads, alternating their order by round:
#   keepalive  HTTP keep-alive (wrk's 32 connections stay open)
#   close      wrk ... -H 'Connection: close': a new connection per request
# Around every kernel and relay measurement the primary's accepted_total (status --json) is read:
# the connections that primary accepted itself, i.e. relayed; under kernel steering it should
# stay near 0 (a warning is printed when it passes 10 % of the row's connections).
#
# Report (stdout, and $BENCH_OUT/proxy_http-<stamp>.md): per workload, a table of every round's
# req/s, kernel/direct and relay/direct, then the medians (of req/s and of the per-round
# ratios), the kernel row's relayed connections, wrk's errors; the CPU each primary used while
# each row ran (both clusters run throughout); the primaries' RSS at the end.
# Primary logs go to $BENCH_OUT/proxy_http-logs-<stamp>/. A row that served no request fails
# the run. Every wait is bounded; each cluster is stopped by its process group and what is left
# of its session killed by pid (also on exit or ^C).
#
# Knobs: BENCH_SECS=8 BENCH_ROUNDS=3 BENCH_WARMUP=1 (s of wrk per cluster before round 1)
#   BENCH_BUILD=1 BENCH_INSTALL=1 (wrk etc., with scripts/need.sh) BENCH_OUT=bench/out
#   BENCH_PROFILE=release (or debug: which build of target/ to run) CARGO_TARGET_DIR
#   BENCH_REQUIRE_KERNEL=0 (1: a kernel row that is not kernel-steered fails the run)
#   BENCH_SMOKE=1: one round of 1 s per row and workload, no warm-up, to check that the script
#   still works end to end (every row served in every workload; a relayed kernel row is said
#   loudly and fails only with BENCH_REQUIRE_KERNEL=1).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SMOKE=${BENCH_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  SECS=${BENCH_SECS:-1} ROUNDS=${BENCH_ROUNDS:-1} WARMUP=${BENCH_WARMUP:-0}
else
  SECS=${BENCH_SECS:-8} ROUNDS=${BENCH_ROUNDS:-3} WARMUP=${BENCH_WARMUP:-1}
fi
REQUIRE_KERNEL=${BENCH_REQUIRE_KERNEL:-0}
PROFILE=${BENCH_PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-target}
FL=${TARGET%/}/$PROFILE/forkline
WORKERS=2
CONC=32
READY_TIMEOUT=20 # seconds a cluster gets to come up
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
NEED_INSTALL=${BENCH_INSTALL:-1} need_ensure wrk curl ss pgrep setsid node python3 ||
  die "cannot run without the above"

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-$ROOT/bench/out}
LOGS=$OUT/proxy_http-logs-$STAMP
RESULTS=$OUT/proxy_http-$STAMP.md
mkdir -p "$LOGS"

# ---------------------------------------------------------------------------------------------
# Processes. Each cluster runs in a session of its own (setsid without a fork: $! is the
# primary, whose pid is the session's and the process group's id).
SIDS=()

# True while a process of session SID is alive (a zombie waiting to be reaped does not count).
session_alive() {
  local p st
  for p in $(pgrep -s "$1" 2>/dev/null); do
    st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ] && return 0
  done
  return 1
}

# Stops the clusters: TERM to each primary's process group (the primary stops its workers, each
# in a process group of its own); whatever of its session is left after 3 s is KILLed by pid.
stop_clusters() {
  local sid p deadline
  for sid in "${SIDS[@]}"; do kill -TERM -- "-$sid" 2>/dev/null || true; done
  deadline=$((SECONDS + 3))
  for sid in "${SIDS[@]}"; do
    while session_alive "$sid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
    for p in $(pgrep -s "$sid" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    wait "$sid" 2>/dev/null || true
  done
  SIDS=()
}
trap stop_clusters EXIT
trap 'stop_clusters; exit 130' INT TERM

# A port nobody uses (no socket in any state, TIME_WAIT included), below the ephemeral range.
USED_PORTS=" "
free_port() {
  local i port
  for i in $(seq 1 200); do
    port=$((20000 + RANDOM % 12000))
    case "$USED_PORTS" in *" $port "*) continue ;; esac
    if [ -z "$(ss -Htan "sport = :$port" 2>/dev/null)" ]; then
      USED_PORTS="$USED_PORTS$port "
      echo "$port"
      return 0
    fi
  done
  die "no free port found"
}

# start NAME PORT [FLAGS...]: a proxy-mode cluster; adds its primary's pid to SIDS.
start_cluster() {
  local name=$1 port=$2
  shift 2
  setsid "$FL" run --mode proxy -w "$WORKERS" --ready listen -l "127.0.0.1:$port" "$@" \
    --name "proxy-bench-$name-$port" --control "$LOGS/$name.sock" \
    -- node bench/node/port_http.js >"$LOGS/$name.log" 2>&1 </dev/null &
  SIDS+=("$!")
}

# status_field NAME KEY: one field of cluster NAME's `forkline status --json` (empty for null
# or when the status cannot be had).
status_field() {
  "$FL" status --control "$LOGS/$1.sock" --json 2>/dev/null |
    python3 -c 'import json, sys; v = json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$2" 2>/dev/null || true
}

# Prints the PORT of every worker of session SID, one a line (sorted, unique). The workers are
# the processes of the session whose environment has FORKLINE_WORKER_ID (forkline sets it, with
# PORT, for every worker it starts); the primary's other children, such as its keeper (a fork
# of the primary that listens on nothing), have none.
worker_ports() {
  local pid env
  for pid in $(pgrep -s "$1" || true); do
    env=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null) || continue
    grep -q '^FORKLINE_WORKER_ID=' <<<"$env" || continue
    sed -n 's/^PORT=//p' <<<"$env"
  done | sort -un
}

# 200 from http://127.0.0.1:PORT/ ?
answers() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/")" = 200 ]; }

# wait_up NAME SID PORT: until the public address answers and every worker answers on its own
# port (bounded); prints the worker ports, one a line.
wait_up() {
  local name=$1 sid=$2 port=$3 deadline=$((SECONDS + READY_TIMEOUT)) up wp ports=()
  while :; do
    kill -0 "$sid" 2>/dev/null || { tail -n 20 "$LOGS/$name.log" >&2; die "$name: forkline exited before its workers came up"; }
    if answers "$port"; then
      mapfile -t ports < <(worker_ports "$sid")
      up=0
      for wp in "${ports[@]}"; do answers "$wp" && up=$((up + 1)); done
      [ "$up" -ge "$WORKERS" ] && break
    fi
    [ "$SECONDS" -lt "$deadline" ] ||
      die "$name: workers did not come up within ${READY_TIMEOUT}s (worker ports found: ${ports[*]:-none}; log $LOGS/$name.log)"
    sleep 0.1
  done
  [ ${#ports[@]} -eq "$WORKERS" ] || die "$name: expected $WORKERS worker ports, found: ${ports[*]}"
  printf '%s\n' "${ports[@]}"
}

# ---------------------------------------------------------------------------------------------
# Start both clusters and check how each one routes.
PK=$(free_port)
PR=$(free_port)
start_cluster kernel "$PK"
start_cluster relay "$PR" --proxy-kernel=false
SID_K=${SIDS[0]} SID_R=${SIDS[1]}
mapfile -t KPORTS < <(wait_up kernel "$SID_K" "$PK")
[ ${#KPORTS[@]} -eq "$WORKERS" ] || die "kernel cluster did not come up"
mapfile -t RPORTS < <(wait_up relay "$SID_R" "$PR")
[ ${#RPORTS[@]} -eq "$WORKERS" ] || die "relay cluster did not come up"
log "kernel cluster on $PK (workers on ${KPORTS[*]}), relay cluster on $PR (workers on ${RPORTS[*]})"

STEER_K=$(status_field kernel steering)
STEER_R=$(status_field relay steering)
log "status: kernel cluster steering=${STEER_K:-?}, relay cluster steering=${STEER_R:-?}"
[ "$STEER_R" = proxy-relay ] || die "the relay cluster (--proxy-kernel=false) says steering=${STEER_R:-nothing}, not proxy-relay"
KERNEL_OK=1 KERNEL_WHY=""
if [ "$STEER_K" != proxy-kernel ]; then
  KERNEL_OK=0
  KERNEL_WHY=$(grep -m1 -E 'proxy: .*(kernel steering|relaying)' "$LOGS/kernel.log" | sed -E 's/^[^ ]+ +//' || true)
  log "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  log "!!! THE KERNEL ROW IS RELAYED: forkline status says steering=${STEER_K:-nothing}, not proxy-kernel"
  log "!!! why (the primary's log): ${KERNEL_WHY:-no log line says; see $LOGS/kernel.log}"
  log "!!! its figures measure the relay twice, not kernel steering$([ "$REQUIRE_KERNEL" = 1 ] && echo '; BENCH_REQUIRE_KERNEL=1: this run will FAIL')"
  log "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
fi
KLABEL=kernel
[ "$KERNEL_OK" = 1 ] || KLABEL="kernel (RELAYED!)"

# ---------------------------------------------------------------------------------------------
# Measure.

# Requests/sec, requests and errors of a wrk report on stdin ("RPS REQUESTS ERRORS"); fails
# (naming what) when wrk served nothing.
wrk_figures() {
  local what=$1 out
  out=$(cat)
  printf '== %s\n%s\n' "$what" "$out" >>"$LOGS/wrk.txt"
  awk -v what="$what" '
    /^Requests\/sec:/ { rps = $2 }
    / requests in / { req = $1 }
    /Socket errors:/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx/ { e += $NF }
    END { if (rps == "" || rps <= 0) exit 1; printf "%s %s %d\n", rps, req, e }' <<<"$out" || {
    printf '%s\n' "$out" >&2
    die "$what: wrk served no request"
  }
}

# wrk_hdr WORKLOAD: the extra arguments of a workload, one a line.
wrk_hdr() { [ "$1" = close ] && printf '%s\n' -H 'Connection: close'; return 0; }

# measure ROW WORKLOAD ROUND: appends "round workload row rps requests errors accepted
# cpu_kernel cpu_relay" to $RAW (accepted: connections the row's primary accepted during it, "-"
# for direct; cpu_*: ms of CPU each primary used during it, whichever row ran).
RAW=$LOGS/raw.tsv
: >"$RAW"
# CPU time (user + system, in clock ticks) of process PID so far.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }' || echo 0; }
TICK_MS=$((1000 / $(getconf CLK_TCK)))
measure() {
  local row=$1 w=$2 round=$3 hdr a0 a1 acc="" fig x y first fa fb rps req err ck0 cr0 ck cr
  mapfile -t hdr < <(wrk_hdr "$w")
  ck0=$(cpu_ticks "$SID_K") cr0=$(cpu_ticks "$SID_R")
  case "$row" in
    kernel | relay)
      local port=$PK
      [ "$row" = relay ] && port=$PR
      a0=$(status_field "$row" accepted_total)
      fig=$(wrk -t2 -c"$CONC" -d"${SECS}s" "${hdr[@]}" "http://127.0.0.1:$port/" | wrk_figures "$row $w round $round")
      a1=$(status_field "$row" accepted_total)
      [ -n "$a0" ] && [ -n "$a1" ] || die "$row: forkline status did not answer"
      acc=$((a1 - a0)) ;;
    direct)
      fa=$(mktemp) fb=$(mktemp)
      wrk -t1 -c$((CONC / 2)) -d"${SECS}s" "${hdr[@]}" "http://127.0.0.1:${KPORTS[0]}/" >"$fa" &
      first=$!
      wrk -t1 -c$((CONC / 2)) -d"${SECS}s" "${hdr[@]}" "http://127.0.0.1:${KPORTS[1]}/" >"$fb"
      wait "$first" || true
      x=$(wrk_figures "direct $w round $round, worker port ${KPORTS[0]}" <"$fa")
      y=$(wrk_figures "direct $w round $round, worker port ${KPORTS[1]}" <"$fb")
      rm -f "$fa" "$fb"
      fig=$(awk -v x="$x" -v y="$y" 'BEGIN { split(x, a, " "); split(y, b, " "); printf "%s %d %d\n", a[1] + b[1], a[2] + b[2], a[3] + b[3] }') ;;
  esac
  ck=$((($(cpu_ticks "$SID_K") - ck0) * TICK_MS)) cr=$((($(cpu_ticks "$SID_R") - cr0) * TICK_MS))
  read -r rps req err <<<"$fig"
  log "round $round, $w, $row: $rps req/s ($req requests, $err errors${acc:+, primary accepted $acc}; primaries' CPU: kernel ${ck} ms, relay ${cr} ms)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$w" "$row" "$rps" "$req" "$err" "${acc:--}" "$ck" "$cr" >>"$RAW"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
if [ "$WARMUP" != 0 ]; then
  log "warm-up: ${WARMUP}s against each cluster"
  wrk -t2 -c"$CONC" -d"${WARMUP}s" "http://127.0.0.1:$PK/" >/dev/null 2>&1 || true
  wrk -t2 -c"$CONC" -d"${WARMUP}s" "http://127.0.0.1:$PR/" >/dev/null 2>&1 || true
fi
ROWS=(kernel relay direct)
WORKLOADS=(keepalive close)
for round in $(seq 1 "$ROUNDS"); do
  order=("${WORKLOADS[@]}")
  [ $((round % 2)) = 0 ] && order=(close keepalive)
  for w in "${order[@]}"; do
    for i in 0 1 2; do measure "${ROWS[$(((i + round - 1) % 3))]}" "$w" "$round"; done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
# Still steered as at the start?
STEER_K_END=$(status_field kernel steering)
if [ "$KERNEL_OK" = 1 ] && [ "$STEER_K_END" != proxy-kernel ]; then
  KERNEL_OK=0 KLABEL="kernel (RELAYED!)" KERNEL_WHY="steering changed to '${STEER_K_END:-nothing}' during the run"
  log "!!! THE KERNEL ROW IS RELAYED at the end: steering=${STEER_K_END:-nothing}"
fi
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }
RSS_K=$(rss "$SID_K") RSS_R=$(rss "$SID_R")

# ---------------------------------------------------------------------------------------------
# Report.
field() { awk -F'\t' -v r="$1" -v w="$2" -v row="$3" -v f="$4" '$1 == r && $2 == w && $3 == row { print $f }' "$RAW"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
describe() {
  case "$1" in
    keepalive) echo "HTTP keep-alive (\`wrk -t2 -c$CONC -d${SECS}s\`; direct: two \`wrk -t1 -c$((CONC / 2))\`, one per worker port)" ;;
    close) echo "connection per request (the same with \`-H 'Connection: close'\`)" ;;
  esac
}
WARNINGS=()
{
  echo "# Proxy mode: kernel steering, relay, direct — $STAMP"
  echo
  echo "forkline \`$FL\` at git $(git rev-parse --short HEAD 2>/dev/null || echo '-'), $WORKERS Node $(node --version) workers" \
    "(\`bench/node/port_http.js\`) per cluster, $ROUNDS round(s) of ${SECS}s per row and workload after ${WARMUP}s of warm-up," \
    "rows rotated by round. Machine: $(nproc) cores, $(uname -sr); load average before $LOAD_BEFORE, after $LOAD_AFTER."
  echo "Kernel row: \`forkline status\` steering=${STEER_K:-?} at the start, ${STEER_K_END:-?} at the end$([ "$KERNEL_OK" = 1 ] || echo " — **NOT KERNEL-STEERED: the kernel row is relayed** (${KERNEL_WHY:-reason unknown})")."
  echo "Relay row: steering=$STEER_R. Direct: the kernel cluster's own workers, on their ports ${KPORTS[*]}."
  for w in "${WORKLOADS[@]}"; do
    echo
    echo "$(describe "$w"):"
    echo
    echo "| round | $KLABEL req/s | relay req/s | direct req/s | kernel / direct | relay / direct | kernel row: connections the primary accepted | wrk errors (k/r/d) |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    kr=() rr=() dr=() qk=() qr=()
    for round in $(seq 1 "$ROUNDS"); do
      k=$(field "$round" "$w" kernel 4) r=$(field "$round" "$w" relay 4) d=$(field "$round" "$w" direct 4)
      acc=$(field "$round" "$w" kernel 7) kreq=$(field "$round" "$w" kernel 5)
      conns=$kreq
      [ "$w" = keepalive ] && conns=$CONC
      if [ "$KERNEL_OK" = 1 ] && [ "$acc" -gt $((conns / 10)) ]; then
        WARNINGS+=("$w round $round: kernel steering on, yet its primary accepted (relayed) $acc connections of about $conns")
      fi
      kr+=("$k") rr+=("$r") dr+=("$d")
      qk+=("$(ratio "$k" "$d")") qr+=("$(ratio "$r" "$d")")
      printf '| %s | %.0f | %.0f | %.0f | %s | %s | %s of ~%s | %s/%s/%s |\n' "$round" "$k" "$r" "$d" \
        "${qk[-1]}" "${qr[-1]}" "$acc" "$conns" "$(field "$round" "$w" kernel 6)" \
        "$(field "$round" "$w" relay 6)" "$(field "$round" "$w" direct 6)"
    done
    printf '| **median** | %.0f | %.0f | %.0f | **%s** | **%s** | | |\n' \
      "$(printf '%s\n' "${kr[@]}" | median)" "$(printf '%s\n' "${rr[@]}" | median)" \
      "$(printf '%s\n' "${dr[@]}" | median)" "$(printf '%s\n' "${qk[@]}" | median)" "$(printf '%s\n' "${qr[@]}" | median)"
  done
  echo
  echo "CPU of the two primaries while each row ran (median over rounds, % of one core; both clusters run throughout," \
    "so an idle primary's own work competes with every row):"
  echo
  echo "| workload | row | kernel cluster's primary | relay cluster's primary |"
  echo "| --- | --- | ---: | ---: |"
  for w in "${WORKLOADS[@]}"; do
    for row in "${ROWS[@]}"; do
      pk=$(for round in $(seq 1 "$ROUNDS"); do field "$round" "$w" "$row" 8; done | median)
      pr=$(for round in $(seq 1 "$ROUNDS"); do field "$round" "$w" "$row" 9; done | median)
      printf '| %s | %s | %.1f %% | %.1f %% |\n' "$w" "$row" "$(awk -v c="$pk" -v s="$SECS" 'BEGIN { print c / s / 10 }')" \
        "$(awk -v c="$pr" -v s="$SECS" 'BEGIN { print c / s / 10 }')"
    done
  done
  echo
  echo "Ratios are per round (rows measured minutes apart at most); the median row is the median of each column." \
    "Primary RSS after the runs: kernel ${RSS_K} MiB, relay ${RSS_R} MiB. Logs and wrk outputs: \`${LOGS#"$ROOT"/}/\`."
  for m in "${WARNINGS[@]}"; do echo; echo "**Warning**: $m."; done
} >"$RESULTS"
echo
cat "$RESULTS"
log "written $RESULTS"
for m in "${WARNINGS[@]}"; do log "WARNING: $m"; done

if [ "$KERNEL_OK" != 1 ]; then
  log "!!! THE KERNEL ROW WAS RELAYED (steering=${STEER_K:-?}): ${KERNEL_WHY:-see $LOGS/kernel.log}"
  if [ "$REQUIRE_KERNEL" = 1 ]; then
    log "BENCH_REQUIRE_KERNEL=1: FAILED"
    exit 1
  fi
fi
[ "$SMOKE" = 1 ] && log "smoke run passed: 3 rows x 2 workloads served$([ "$KERNEL_OK" = 1 ] || echo ' (kernel row RELAYED)')"
exit 0
