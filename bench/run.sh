#!/usr/bin/env bash
# bench/run.sh — forkline vs Node's cluster vs "the physical limit", side by side, in one run.
#
# For each delay (0 and 10 ms) and each configuration below, start the server on a fresh
# 127.0.0.1 port, wait (bounded) until it answers, warm up, load it with `loadgen`, record req/s,
# the CV of per-worker counts, errors and the primary's VmRSS, then kill its process group.
#   forkline-rr / forkline-shared / forkline-reuseport   target/release/examples/cluster
#   forkline-rr-nocoalesce      the same, FORKLINE_ACCEPT_COALESCE_US=0 (accept coalescing off)
#   node-rr / node-none                                  bench/node/cluster.js
#   limit                                                2 x limit-server on SO_REUSEPORT
#   forkline-proxy                                       forkline run --mode proxy -- limit-server
#   forkline-rr-ops-off / forkline-rr-ops-on             ops-server (the seed cluster, rr) without
#                               and with metrics + control socket, /metrics scraped every second
# Then a keep-alive HTTP section with wrk (node http.js vs target/release/examples/http).
# Configurations whose binary is missing are skipped, not fatal.
#
# Knobs (environment): BENCH_SECS=8 BENCH_ROUNDS=1 BENCH_WARMUP=1 BENCH_WORKERS=2
#   BENCH_CONCURRENCY=32 BENCH_DELAYS="0 10" BENCH_CONFIGS="<ids>" BENCH_BUILD=1 BENCH_HTTP=1
#   BENCH_INSTALL=1 (apt-get install wrk if missing) CARGO_TARGET_DIR (where binaries are)
#   BENCH_SCRAPE_SECS=1 (how often the forkline-rr-ops-on row's /metrics is scraped).
#   BENCH_PROFILE=release (or debug: the cargo profile built and run). BENCH_OUT=bench/out.
#   BENCH_SMOKE=1: a check that the script still works, not a measurement: every configuration
#   once, at delay 0, 1 s each, no warm-up; it fails when any configuration was skipped, did
#   not start or served nothing (a full run reports those in its table and goes on).
# All traffic goes to 127.0.0.1. Every wait is bounded; every server is killed by its group id.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SMOKE=${BENCH_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  SECS=${BENCH_SECS:-1} WARMUP=${BENCH_WARMUP:-0} DELAYS=${BENCH_DELAYS:-0}
else
  SECS=${BENCH_SECS:-8} WARMUP=${BENCH_WARMUP:-1} DELAYS=${BENCH_DELAYS:-"0 10"}
fi
ROUNDS=${BENCH_ROUNDS:-1}
WORKERS=${BENCH_WORKERS:-2}
CONC=${BENCH_CONCURRENCY:-32}
CONFIGS=${BENCH_CONFIGS:-"limit node-rr node-none forkline-rr forkline-rr-nocoalesce forkline-shared forkline-reuseport forkline-proxy forkline-rr-ops-off forkline-rr-ops-on"}
HTTP_CONFIGS=${BENCH_HTTP_CONFIGS:-"node-http-rr node-http-none forkline-http-rr forkline-http-shared forkline-http-reuseport"}
BUILD=${BENCH_BUILD:-1}
HTTP=${BENCH_HTTP:-1}
INSTALL=${BENCH_INSTALL:-1}
PROFILE=${BENCH_PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TARGET=${TARGET%/}/$PROFILE
# The cargo flag that builds into target/$PROFILE (cargo calls the debug profile `dev`).
case "$PROFILE" in release) CARGO_PROFILE=(--release) ;; debug) CARGO_PROFILE=() ;; *) CARGO_PROFILE=(--profile "$PROFILE") ;; esac
READY_TIMEOUT=15 # seconds a server gets to come up
SCRAPE_SECS=${BENCH_SCRAPE_SECS:-1}

LOADGEN=$TARGET/loadgen
LIMIT_SERVER=$TARGET/limit-server
FL_CLUSTER=$TARGET/examples/cluster
FL_HTTP=$TARGET/examples/http
FL_CLI=$TARGET/forkline
OPS_SERVER=$TARGET/ops-server
NODE_CLUSTER=$ROOT/bench/node/cluster.js
NODE_HTTP=$ROOT/bench/node/http.js

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-$ROOT/bench/out}
LOGS=$OUT/logs-$STAMP
RAW=$OUT/raw-$STAMP.tsv
RESULTS=$OUT/results-$STAMP.md
mkdir -p "$LOGS"

log() { printf '[bench] %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Process handling: each server runs in its own session (setsid, no fork: $! is the leader, and
# its pid is the session's and its process group's id). `kill -- -PGID` reaches the primary and
# what shares its group (Node's workers); forkline's workers each have a process group of their
# own, so what the session still holds after the grace period is killed by pid.
CURRENT_PGID=""
SCRAPER_PGID=""

# True while a process of session SID is alive (zombies waiting to be reaped do not count).
session_alive() {
  local p st
  for p in $(pgrep -s "$1" 2>/dev/null); do
    st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ] && return 0
  done
  return 1
}

stop_group() {
  local pgid=$1 i p
  [ -n "$pgid" ] || return 0
  kill -TERM -- "-$pgid" 2>/dev/null || true
  for i in $(seq 1 30); do
    session_alive "$pgid" || break
    sleep 0.1
  done
  kill -KILL -- "-$pgid" 2>/dev/null || true
  for p in $(pgrep -s "$pgid" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  wait "$pgid" 2>/dev/null || true
}

cleanup() {
  if [ -n "$CURRENT_PGID" ]; then
    stop_group "$CURRENT_PGID"
    CURRENT_PGID=""
  fi
  if [ -n "$SCRAPER_PGID" ]; then
    stop_group "$SCRAPER_PGID"
    SCRAPER_PGID=""
  fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

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
  log "no free port found"
  return 1
}

# VmRSS of a process in KiB, or empty.
rss_kib() {
  [ -n "${1:-}" ] || return 0
  awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true
}

# Pull a numeric field out of loadgen's JSON line (its format is ours, so sed is enough).
json_num() {
  sed -nE "s/.*\"$1\":(-?[0-9.eE+-]+).*/\1/p" <<<"$2"
}

# ---------------------------------------------------------------------------------------------
# Configurations.

# Prints why a configuration cannot run, or nothing when it can.
why_skip() {
  case "$1" in
    limit) [ -x "$LIMIT_SERVER" ] || echo "no $LIMIT_SERVER" ;;
    node-*) command -v node >/dev/null || { echo "node not installed"; return; }
      case "$1" in node-http-*) [ -f "$NODE_HTTP" ] || echo "no $NODE_HTTP" ;;
        *) [ -f "$NODE_CLUSTER" ] || echo "no $NODE_CLUSTER" ;; esac ;;
    forkline-http-*) [ -x "$FL_HTTP" ] || echo "no $FL_HTTP (example not built yet)" ;;
    forkline-rr-ops-*)
      if [ ! -x "$OPS_SERVER" ]; then echo "no $OPS_SERVER"
      elif [ "$1" = forkline-rr-ops-on ] && ! command -v curl >/dev/null; then echo "curl not installed"; fi ;;
    forkline-proxy)
      if [ ! -x "$FL_CLI" ]; then echo "no $FL_CLI"
      elif ! "$FL_CLI" run --help >/dev/null 2>&1; then echo "$FL_CLI has no 'run' subcommand"
      elif [ ! -x "$LIMIT_SERVER" ]; then echo "no $LIMIT_SERVER"; fi ;;
    forkline-*) [ -x "$FL_CLUSTER" ] || echo "no $FL_CLUSTER (example not built yet)" ;;
    *) echo "unknown configuration" ;;
  esac
}

label() {
  case "$1" in
    limit) echo "limit (${WORKERS}x limit-server, SO_REUSEPORT)" ;;
    node-rr) echo "node cluster rr" ;;
    node-none) echo "node cluster none" ;;
    forkline-rr) echo "forkline rr" ;;
    forkline-rr-nocoalesce) echo "forkline rr, accept coalescing off" ;;
    forkline-shared) echo "forkline shared (none)" ;;
    forkline-reuseport) echo "forkline reuseport" ;;
    forkline-proxy) echo "forkline proxy -> limit-server" ;;
    forkline-rr-ops-off) echo "forkline rr (ops-server), metrics + control off" ;;
    forkline-rr-ops-on) echo "forkline rr (ops-server), metrics + control on, scraped every ${SCRAPE_SECS}s" ;;
    node-http-rr) echo "node http.js rr" ;;
    node-http-none) echo "node http.js none" ;;
    forkline-http-rr) echo "forkline http rr" ;;
    forkline-http-shared) echo "forkline http shared (none)" ;;
    forkline-http-reuseport) echo "forkline http reuseport" ;;
    *) echo "$1" ;;
  esac
}

# start CONFIG PORT DELAY LOGFILE: sets CURRENT_PGID and PRIMARY (pid whose RSS is reported),
# and SCRAPER_PGID for a configuration scraped while it runs.
start() {
  local cfg=$1 port=$2 delay=$3 logf=$4 addr=127.0.0.1:$2
  PRIMARY=""
  case "$cfg" in
    forkline-rr-ops-off)
      setsid "$OPS_SERVER" "$addr" "$delay" "$WORKERS" >"$logf" 2>&1 </dev/null &
      CURRENT_PGID=$! PRIMARY=$CURRENT_PGID ;;
    forkline-rr-ops-on)
      local metrics
      metrics=127.0.0.1:$(free_port)
      BENCH_METRICS=$metrics BENCH_CONTROL=$LOGS/ops-$port.sock \
        setsid "$OPS_SERVER" "$addr" "$delay" "$WORKERS" >"$logf" 2>&1 </dev/null &
      CURRENT_PGID=$! PRIMARY=$CURRENT_PGID
      # A Prometheus of sorts: the whole /metrics every SCRAPE_SECS, for as long as it runs.
      # shellcheck disable=SC2016 # expanded by the inner shell
      setsid bash -c 'while sleep "$1"; do curl -s -o /dev/null --max-time 2 "http://$0/metrics"; done' \
        "$metrics" "$SCRAPE_SECS" >/dev/null 2>&1 </dev/null &
      SCRAPER_PGID=$! ;;
    limit)
      # shellcheck disable=SC2016 # expanded by the inner shell
      setsid bash -c 'for _ in $(seq 1 "$3"); do "$0" "$1" "$2" & done; wait' \
        "$LIMIT_SERVER" "$addr" "$delay" "$WORKERS" >"$logf" 2>&1 </dev/null &
      CURRENT_PGID=$! ;;
    node-rr | node-none)
      NODE_CLUSTER_SCHED_POLICY=${cfg#node-} setsid node "$NODE_CLUSTER" "$addr" "$delay" "$WORKERS" \
        >"$logf" 2>&1 </dev/null &
      CURRENT_PGID=$! PRIMARY=$CURRENT_PGID ;;
    node-http-rr | node-http-none)
      NODE_CLUSTER_SCHED_POLICY=${cfg#node-http-} setsid node "$NODE_HTTP" "$addr" "$delay" "$WORKERS" \
        >"$logf" 2>&1 </dev/null &
      CURRENT_PGID=$! PRIMARY=$CURRENT_PGID ;;
    forkline-rr | forkline-shared | forkline-reuseport)
      local mode=${cfg#forkline-}
      [ "$mode" = shared ] && mode=none
      FORKLINE_SCHED_POLICY=$mode setsid "$FL_CLUSTER" "$addr" "$delay" "$WORKERS" \
        >"$logf" 2>&1 </dev/null &
      CURRENT_PGID=$! PRIMARY=$CURRENT_PGID ;;
    forkline-rr-nocoalesce)
      FORKLINE_SCHED_POLICY=rr FORKLINE_ACCEPT_COALESCE_US=0 \
        setsid "$FL_CLUSTER" "$addr" "$delay" "$WORKERS" >"$logf" 2>&1 </dev/null &
      CURRENT_PGID=$! PRIMARY=$CURRENT_PGID ;;
    forkline-http-*)
      local mode=${cfg#forkline-http-}
      [ "$mode" = shared ] && mode=none
      FORKLINE_SCHED_POLICY=$mode setsid "$FL_HTTP" "$addr" "$WORKERS" >"$logf" 2>&1 </dev/null &
      CURRENT_PGID=$! PRIMARY=$CURRENT_PGID ;;
    forkline-proxy)
      # The workers are limit-servers; `-` makes each listen on 127.0.0.1:$PORT (set by forkline).
      setsid "$FL_CLI" run --mode proxy -w "$WORKERS" -l "$addr" -- "$LIMIT_SERVER" - "$delay" \
        >"$logf" 2>&1 </dev/null &
      CURRENT_PGID=$! PRIMARY=$CURRENT_PGID ;;
  esac
}

# How many "worker is up" lines the configuration prints (0: do not wait for any).
expected_lines() {
  case "$1" in
    limit) echo "$WORKERS" ;;
    node-* | forkline-rr | forkline-rr-nocoalesce | forkline-shared | forkline-reuseport | forkline-http-* | forkline-rr-ops-*) echo "$WORKERS" ;;
    *) echo 0 ;;
  esac
}
up_lines() { grep -oE 'Create worker-|listening on|serving http' "$1" 2>/dev/null | wc -l; }

seed_probe() { "$LOADGEN" --addr "127.0.0.1:$1" -c 1 -n 1 -d 2s --timeout 1s --json >/dev/null 2>&1; }
http_probe() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
    printf "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" >&3
    head -c 12 <&3' "$1" 2>/dev/null | grep -q '^HTTP/1\.[01] 200'
}

# wait_ready CONFIG PORT LOGFILE PROBE: bounded by READY_TIMEOUT.
wait_ready() {
  local cfg=$1 port=$2 logf=$3 probe=$4 want i
  want=$(expected_lines "$cfg")
  for i in $(seq 1 $((READY_TIMEOUT * 10))); do
    kill -0 "$CURRENT_PGID" 2>/dev/null || return 1
    if [ "$(up_lines "$logf")" -ge "$want" ] && "$probe" "$port"; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# One measurement of the seed workload. Appends a row to $RAW:
# round cfg delay rps cv errors rss_kib worker_exits status
run_seed() {
  local cfg=$1 delay=$2 round=$3 port logf json rps cv errors rss exits
  port=$(free_port)
  logf=$LOGS/$cfg-d$delay-r$round.log
  log "round $round: $cfg, delay $delay ms, port $port"
  start "$cfg" "$port" "$delay" "$logf"
  if ! wait_ready "$cfg" "$port" "$logf" seed_probe; then
    log "  $cfg did not come up within ${READY_TIMEOUT}s (see $logf)"
    stop_group "$CURRENT_PGID"; CURRENT_PGID=""
    if [ -n "$SCRAPER_PGID" ]; then stop_group "$SCRAPER_PGID"; SCRAPER_PGID=; fi
    printf '%s\t%s\t%s\t\t\t\t\t\t%s\n' "$round" "$cfg" "$delay" "did not start" >>"$RAW"
    return 0
  fi
  if [ "$WARMUP" != 0 ]; then
    "$LOADGEN" --addr "127.0.0.1:$port" -c "$CONC" -d "${WARMUP}s" --json >/dev/null 2>&1 || true
  fi
  json=$("$LOADGEN" --addr "127.0.0.1:$port" -c "$CONC" -d "${SECS}s" --workers "$WORKERS" --json \
    2>>"$logf" || true)
  rss=$(rss_kib "$PRIMARY")
  echo "$json" >>"$LOGS/loadgen.jsonl"
  # Worker deaths during the measurement (counted before the shutdown's own exits).
  exits=$(grep -c 'died with code' "$logf" 2>/dev/null || true)
  stop_group "$CURRENT_PGID"; CURRENT_PGID=
  if [ -n "$SCRAPER_PGID" ]; then stop_group "$SCRAPER_PGID"; SCRAPER_PGID=; fi
  rps=$(json_num rps "$json"); cv=$(json_num cv "$json"); errors=$(json_num errors "$json")
  if [ -z "$rps" ]; then
    printf '%s\t%s\t%s\t\t\t\t\t\t%s\n' "$round" "$cfg" "$delay" "loadgen failed" >>"$RAW"
    return 0
  fi
  log "  $(printf '%.0f' "$rps") req/s, CV $(awk -v c="$cv" 'BEGIN{printf "%.2f", c*100}')%, errors $errors, primary RSS ${rss:--} KiB"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$cfg" "$delay" "$rps" "$cv" "$errors" \
    "$rss" "$exits" "ok" >>"$RAW"
}

# One wrk measurement of an HTTP configuration. Appends to $RAW with delay "http".
run_http() {
  local cfg=$1 round=$2 port logf out rps errors rss exits
  port=$(free_port)
  logf=$LOGS/$cfg-r$round.log
  log "round $round: $cfg (HTTP keep-alive, wrk), port $port"
  start "$cfg" "$port" 0 "$logf"
  if ! wait_ready "$cfg" "$port" "$logf" http_probe; then
    log "  $cfg did not come up within ${READY_TIMEOUT}s (see $logf)"
    stop_group "$CURRENT_PGID"; CURRENT_PGID=""
    printf '%s\t%s\thttp\t\t\t\t\t\t%s\n' "$round" "$cfg" "did not start" >>"$RAW"
    return 0
  fi
  if [ "$WARMUP" != 0 ]; then
    timeout $((WARMUP + 10)) wrk -t2 -c"$CONC" -d"${WARMUP}s" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
  fi
  out=$(timeout $((SECS + 30)) wrk -t2 -c"$CONC" -d"${SECS}s" --latency "http://127.0.0.1:$port/" 2>&1 || true)
  rss=$(rss_kib "$PRIMARY")
  printf '%s\n' "$out" >>"$logf"
  stop_group "$CURRENT_PGID"; CURRENT_PGID=""
  exits=$(grep -c 'died with code' "$logf" 2>/dev/null || true)
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  # Socket errors (connect/read/write/timeout) plus non-2xx/3xx responses.
  errors=$(awk '/Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} /Non-2xx or 3xx/ {n += $NF}
    END {print n + 0}' <<<"$out")
  if [ -z "$rps" ]; then
    printf '%s\t%s\thttp\t\t\t\t\t\t%s\n' "$round" "$cfg" "wrk failed" >>"$RAW"
    return 0
  fi
  log "  $rps req/s, errors $errors, primary RSS ${rss:--} KiB"
  printf '%s\t%s\thttp\t%s\t\t%s\t%s\t%s\t%s\n' "$round" "$cfg" "$rps" "$errors" "$rss" "$exits" "ok" >>"$RAW"
}

# ---------------------------------------------------------------------------------------------
# Build.
if [ "$BUILD" = 1 ]; then
  log "building loadgen and limit-server"
  cargo build "${CARGO_PROFILE[@]}" -p forkline-loadgen
  log "building forkline's examples (missing ones are skipped later)"
  cargo build "${CARGO_PROFILE[@]}" --example cluster -p forkline || log "examples/cluster did not build: forkline rows will be skipped"
  cargo build "${CARGO_PROFILE[@]}" --example http -p forkline || log "examples/http did not build: forkline HTTP rows will be skipped"
  log "building ops-server (the seed cluster with metrics and control switchable)"
  cargo build "${CARGO_PROFILE[@]}" -p forkline-loadgen --features ops --bin ops-server ||
    log "ops-server did not build: the forkline-rr-ops rows will be skipped"
  if [ -f crates/forkline-cli/Cargo.toml ]; then
    cargo build "${CARGO_PROFILE[@]}" -p forkline-cli || log "forkline-cli did not build: the proxy row will be skipped"
  fi
fi
[ -x "$LOADGEN" ] || { log "no $LOADGEN: build it with cargo build ${CARGO_PROFILE[*]} -p forkline-loadgen"; exit 1; }

if [ "$HTTP" = 1 ] && ! command -v wrk >/dev/null; then
  # shellcheck source=scripts/need.sh
  . "$ROOT/scripts/need.sh"
  NEED_INSTALL=$INSTALL need_ensure wrk || log "wrk is not available: the HTTP section will be skipped"
fi

# ---------------------------------------------------------------------------------------------
# Measure. Each round runs every configuration once per delay, in an order rotated by one per
# round, so slow drift on this shared machine (other builds, thermal) hits every row alike.
: >"$RAW"
declare -A SKIP=()
RUNNABLE=()
for cfg in $CONFIGS; do
  reason=$(why_skip "$cfg")
  if [ -n "$reason" ]; then SKIP[$cfg]=$reason; log "skipping $cfg: $reason"; else RUNNABLE+=("$cfg"); fi
done
HTTP_RUNNABLE=()
if [ "$HTTP" = 1 ]; then
  for cfg in $HTTP_CONFIGS; do
    if ! command -v wrk >/dev/null; then reason="wrk not installed"; else reason=$(why_skip "$cfg"); fi
    if [ -n "$reason" ]; then SKIP[$cfg]=$reason; log "skipping $cfg: $reason"; else HTTP_RUNNABLE+=("$cfg"); fi
  done
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
  n=${#RUNNABLE[@]}
  for delay in $DELAYS; do
    for i in $(seq 0 $((n - 1))); do
      run_seed "${RUNNABLE[$(((i + round - 1) % n))]}" "$delay" "$round"
    done
  done
  m=${#HTTP_RUNNABLE[@]}
  for i in $(seq 0 $((m - 1))); do
    run_http "${HTTP_RUNNABLE[$(((i + round - 1) % m))]}" "$round"
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Report: the mean over rounds of every measured value, ratios taken between those means.
aggregate() { # CONFIG DELAY -> "rps cv errors rss_kib exits n" (means; n = rounds that ran)
  awk -F'\t' -v c="$1" -v d="$2" '$2 == c && $3 == d && $9 == "ok" {
      n++; r += $4; v += $5; e += $6; x += $8; if ($7 != "") { m += $7; mn++ } }
    END { if (n) printf "%f %f %f %s %d %d\n", r/n, v/n, e/n, (mn ? m/mn : "-"), x, n }' "$RAW"
}
status_of() { # why a configuration has no numbers
  local s
  if [ -n "${SKIP[$1]:-}" ]; then echo "skipped: ${SKIP[$1]}"; return; fi
  s=$(awk -F'\t' -v c="$1" -v d="$2" '$2 == c && $3 == d && $9 != "ok" {print $9; exit}' "$RAW")
  echo "${s:-not run}"
}
round_ratios() { # CONFIG DELAY BASE -> "min–max" of CONFIG/BASE taken within each round
  awk -F'\t' -v c="$1" -v d="$2" -v b="$3" '$3 == d && $9 == "ok" && ($2 == c || $2 == b) {
      if ($2 == c) x[$1] = $4; else y[$1] = $4 }
    END { for (r in x) if (y[r] > 0) { q = x[r] / y[r]; if (n == 0 || q < lo) lo = q; if (n == 0 || q > hi) hi = q; n++ }
      if (n) printf "%.2f–%.2f", lo, hi; else printf "-" }' "$RAW"
}
fmt_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a/b; else printf "-" }'; }
fmt_mib() { awk -v k="$1" 'BEGIN { if (k == "-" || k == "") printf "-"; else printf "%.1f", k/1024 }'; }

{
  echo "# forkline benchmark, $STAMP"
  echo
  echo "Machine: $(nproc) cores, $(uname -sr), node $(node --version 2>/dev/null || echo '-'),"\
    "git $(git rev-parse --short HEAD 2>/dev/null || echo '-'); load average before $LOAD_BEFORE, after $LOAD_AFTER."
  echo
  echo "Seed workload (connection per request, \`Request handled by worker-PID\`): $WORKERS workers," \
    "$CONC concurrent loadgen clients, ${SECS}s per measurement after ${WARMUP}s warm-up," \
    "$ROUNDS round(s), values are means over rounds. Ratios are against the same delay's rows of this run;" \
    "\"per round\" gives the lowest and highest ratio taken within one round (the rows of one round are measured within about a minute)."
  echo
  echo "| config | delay ms | req/s | ratio to limit | per round | ratio to node rr | per round | CV % | errors | primary RSS MiB | notes |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  for delay in $DELAYS; do
    limit_rps=$(aggregate limit "$delay" | cut -d' ' -f1)
    node_rps=$(aggregate node-rr "$delay" | cut -d' ' -f1)
    for cfg in $CONFIGS; do
      agg=$(aggregate "$cfg" "$delay")
      if [ -z "$agg" ]; then
        echo "| $(label "$cfg") | $delay | - | - | - | - | - | - | - | - | $(status_of "$cfg" "$delay") |"
        continue
      fi
      read -r rps cv errors rss exits n <<<"$agg"
      notes=""
      [ "$exits" -gt 0 ] && notes="$exits worker exit(s)"
      [ "$n" -lt "$ROUNDS" ] && notes="${notes:+$notes; }$n of $ROUNDS rounds"
      printf '| %s | %s | %.0f | %s | %s | %s | %s | %.2f | %.0f | %s | %s |\n' "$(label "$cfg")" "$delay" "$rps" \
        "$(fmt_ratio "$rps" "${limit_rps:-0}")" "$(round_ratios "$cfg" "$delay" limit)" \
        "$(fmt_ratio "$rps" "${node_rps:-0}")" "$(round_ratios "$cfg" "$delay" node-rr)" \
        "$(awk -v c="$cv" 'BEGIN{print c*100}')" "$errors" "$(fmt_mib "$rss")" "$notes"
    done
  done
  if [[ " $CONFIGS " == *" forkline-rr-ops-off "* && " $CONFIGS " == *" forkline-rr-ops-on "* ]]; then
    echo
    echo "Metrics and control socket, on against off (the same ops-server binary, rows of one round run" \
      "back to back; on: /metrics scraped every ${SCRAPE_SECS}s by curl, the control socket served):"
    echo
    echo "| delay ms | off req/s | on req/s | on / off | per round | primary RSS MiB off | on |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for delay in $DELAYS; do
      off=$(aggregate forkline-rr-ops-off "$delay"); on=$(aggregate forkline-rr-ops-on "$delay")
      if [ -z "$off" ] || [ -z "$on" ]; then continue; fi
      read -r off_rps _ _ off_rss _ _ <<<"$off"
      read -r on_rps _ _ on_rss _ _ <<<"$on"
      printf '| %s | %.0f | %.0f | %s | %s | %s | %s |\n' "$delay" "$off_rps" "$on_rps" \
        "$(awk -v a="$on_rps" -v b="$off_rps" 'BEGIN { if (b > 0) printf "%.3f", a/b; else printf "-" }')" \
        "$(round_ratios forkline-rr-ops-on "$delay" forkline-rr-ops-off)" "$(fmt_mib "$off_rss")" "$(fmt_mib "$on_rss")"
    done
  fi
  if [ "$HTTP" = 1 ]; then
    echo
    echo "HTTP keep-alive (wrk -t2 -c$CONC -d${SECS}s, hello world, delay 0, $WORKERS workers):"
    echo
    echo "| config | req/s | ratio to node http rr | errors | primary RSS MiB | notes |"
    echo "| --- | ---: | ---: | ---: | ---: | --- |"
    node_rps=$(aggregate node-http-rr http | cut -d' ' -f1)
    for cfg in $HTTP_CONFIGS; do
      agg=$(aggregate "$cfg" http)
      if [ -z "$agg" ]; then
        echo "| $(label "$cfg") | - | - | - | - | $(status_of "$cfg" http) |"
        continue
      fi
      read -r rps _ errors rss exits n <<<"$agg"
      notes=""
      [ "$exits" -gt 0 ] && notes="$exits worker exit(s)"
      printf '| %s | %.0f | %s | %.0f | %s | %s |\n' "$(label "$cfg")" "$rps" \
        "$(fmt_ratio "$rps" "${node_rps:-0}")" "$errors" "$(fmt_mib "$rss")" "$notes"
    done
  fi
  echo
  echo "Raw rows: \`${RAW#"$ROOT"/}\`; server logs and loadgen JSON: \`${LOGS#"$ROOT"/}/\`."
} >"$RESULTS"

echo
cat "$RESULTS"
log "written $RESULTS"

# A smoke run fails when anything did not run: a configuration skipped, one that did not start,
# or one that served nothing.
if [ "$SMOKE" = 1 ]; then
  failed=0
  for cfg in "${!SKIP[@]}"; do log "smoke: $cfg was skipped: ${SKIP[$cfg]}"; failed=1; done
  for cfg in "${RUNNABLE[@]}"; do
    for delay in $DELAYS; do
      agg=$(aggregate "$cfg" "$delay")
      if [ -z "$agg" ] || ! awk -v r="${agg%% *}" 'BEGIN { exit !(r > 0) }'; then
        log "smoke: $cfg at delay $delay served nothing: $(status_of "$cfg" "$delay") (logs: $LOGS)"; failed=1
      fi
    done
  done
  for cfg in "${HTTP_RUNNABLE[@]}"; do
    agg=$(aggregate "$cfg" http)
    if [ -z "$agg" ] || ! awk -v r="${agg%% *}" 'BEGIN { exit !(r > 0) }'; then
      log "smoke: $cfg served nothing: $(status_of "$cfg" http) (logs: $LOGS)"; failed=1
    fi
  done
  [ "$failed" = 0 ] || { log "smoke run FAILED"; exit 1; }
  log "smoke run passed: ${#RUNNABLE[@]} seed and ${#HTTP_RUNNABLE[@]} HTTP configurations served"
fi
