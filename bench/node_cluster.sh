#!/usr/bin/env bash
# bench/node_cluster.sh — one unmodified Node cluster HTTP app (bench/node/cluster_http.js) under
# Node's own primary and under forkline's, side by side in one run (issue #19).
#
# Rows (BENCH_CONFIGS, ids), each with W = BENCH_WORKERS (2) workers:
#   node-rr          NODE_CLUSTER_SCHED_POLICY=rr   node cluster_http.js ADDR W   (Node's default)
#   node-none        NODE_CLUSTER_SCHED_POLICY=none node cluster_http.js ADDR W
#   forkline-rr      forkline run --ipc node --mode round-robin -w W -- node cluster_http.js ADDR
#   forkline-steer   forkline run --ipc node --mode steer -w W -- ...
#   forkline-shared  forkline run --ipc node --mode shared -w W -- ...   (a reference row)
# Under forkline every process of the app is a worker and its server.listen(ADDR) asks forkline
# for the socket over Node's own cluster channel. forkline-rr is listed as "not available"
# (and skipped in later rounds) only when the forkline built refuses it with exit 2, i.e. a
# build from before round-robin for Node workers; any other failure to come up is "did not
# start". Each forkline row is checked against `forkline status --json` once it is up: its
# mode must be the one asked for (else the row fails: "wrong mode"), steer mode's `steering`
# is reported (a BPF fallback is said loudly), and around each forkline-rr measurement the
# primary's handed_off_total must grow (the primary accepted and handed the connections over
# with Node's `newconn`; else the row fails: "not round-robin").
#
# Workloads (BENCH_WORKLOADS), each against every row:
#   keepalive   wrk -t2 -c32 -dSECS, HTTP keep-alive
#   close       the same with -H 'Connection: close': a new connection per request
# (the project's loadgen speaks the raw seed protocol, not HTTP, so wrk drives both here).
#
# Each round starts every row once, in an order rotated by one per round, so that drift on this
# shared machine hits every row alike: a fresh free 127.0.0.1 port, the app in a session of its
# own, wait (bounded) until W workers printed `listening` and a request is answered, warm-up,
# then each workload (their order alternates by round). Around each measurement every worker
# is sent SIGUSR2 and prints how many requests it has served; the differences are the
# per-worker counts, whose CV (population stddev / mean, over W workers) is the balance.
# Report: a markdown table per workload with req/s (mean over rounds), the ratio to the Node rr
# row and to the Node none row (each of the means, and the lowest–highest ratio within one
# round), per-worker CV, errors, and notes (what `forkline status` said of a forkline row; for
# forkline-rr, the connections its primary handed off against those the workers counted);
# written to $BENCH_OUT/node_cluster-<node version>-<stamp>.md,
# raw rows to ...tsv, server logs and wrk outputs to node_cluster-logs-<stamp>/.
#
# Knobs (environment): BENCH_NODE=node (the Node binary, any path: the axis for Node 18/20/22;
#   Node's primary forks its workers from the same binary, forkline runs it as the workers)
#   BENCH_SECS=8 BENCH_ROUNDS=3 BENCH_WARMUP=1 BENCH_WORKERS=2 BENCH_CONCURRENCY=32
#   BENCH_CONFIGS="node-rr node-none forkline-rr forkline-steer forkline-shared"
#   BENCH_WORKLOADS="keepalive close" BENCH_BUILD=1 (cargo build -p forkline-cli)
#   BENCH_PROFILE=release (or debug: the build of target/ that runs) CARGO_TARGET_DIR
#   BENCH_INSTALL=1 (scripts/need.sh installs wrk etc. when missing) BENCH_OUT=bench/out
#   BENCH_REQUIRE_RR=1 (the default: a forkline-rr row that did not run — not available, did not
#   start, not round-robin, or served nothing — fails the run, smoke or full, after the report;
#   0: it is only said loudly)
#   BENCH_SMOKE=1: a check, not a measurement: one round, every row and workload, 1 s each, no
#   warm-up; it fails when a row was skipped (forkline-rr not available only with
#   BENCH_REQUIRE_RR=1, the default), did not start, ran in the wrong mode, or served no
#   request in a workload.
# All traffic goes to 127.0.0.1. Every wait is bounded; every server is stopped by its
# process group, and what is left of its session is killed by pid (also on exit or ^C).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SMOKE=${BENCH_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  SECS=${BENCH_SECS:-1} WARMUP=${BENCH_WARMUP:-0} ROUNDS=${BENCH_ROUNDS:-1}
else
  SECS=${BENCH_SECS:-8} WARMUP=${BENCH_WARMUP:-1} ROUNDS=${BENCH_ROUNDS:-3}
fi
WORKERS=${BENCH_WORKERS:-2}
CONC=${BENCH_CONCURRENCY:-32}
CONFIGS=${BENCH_CONFIGS:-"node-rr node-none forkline-rr forkline-steer forkline-shared"}
WORKLOADS=${BENCH_WORKLOADS:-"keepalive close"}
NODE=${BENCH_NODE:-node}
REQUIRE_RR=${BENCH_REQUIRE_RR:-1}
PROFILE=${BENCH_PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
FL=${TARGET%/}/$PROFILE/forkline
APP=$ROOT/bench/node/cluster_http.js
READY_TIMEOUT=20 # seconds a server gets to come up
SNAP_TIMEOUT=5   # seconds the workers get to print their counts

log() { printf '[node-cluster] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Build and tools.
if [ "${BENCH_BUILD:-1}" = 1 ]; then
  # The cargo flag that builds into target/$PROFILE (cargo calls the debug profile `dev`).
  case "$PROFILE" in release) flags=(--release) ;; debug) flags=() ;; *) flags=(--profile "$PROFILE") ;; esac
  log "building forkline-cli ($PROFILE)"
  cargo build "${flags[@]}" -p forkline-cli >&2 || log "forkline-cli did not build: the forkline rows will be skipped"
fi
# shellcheck source=scripts/need.sh
. scripts/need.sh
NEED_INSTALL=${BENCH_INSTALL:-1} need_ensure wrk curl ss pgrep setsid python3 || die "cannot run without the above"
NODE_BIN=$(command -v "$NODE" 2>/dev/null) || die "no Node binary '$NODE' (BENCH_NODE)"
NODE_VERSION=$("$NODE_BIN" --version 2>/dev/null) || die "$NODE_BIN --version failed"
[ -f "$APP" ] || die "no $APP"
for w in $WORKLOADS; do
  case "$w" in keepalive | close) ;; *) die "unknown workload '$w' (keepalive close)" ;; esac
done

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-$ROOT/bench/out}
LOGS=$OUT/node_cluster-logs-$STAMP
RAW=$OUT/node_cluster-$NODE_VERSION-$STAMP.tsv
RESULTS=$OUT/node_cluster-$NODE_VERSION-$STAMP.md
mkdir -p "$LOGS"

# ---------------------------------------------------------------------------------------------
# Processes. Each server runs in its own session (setsid without a fork: $! is its leader, whose
# pid is the session's and the process group's id). TERM to the group reaches Node's primary
# and its workers (one group) or forkline's primary (which stops its workers, each in a group of
# its own); whatever the session still holds after 3 s is KILLed by pid.
SID=""

# True while a process of session $1 is alive (a zombie waiting to be reaped does not count).
session_alive() {
  local p st
  for p in $(pgrep -s "$1" 2>/dev/null); do
    st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ] && return 0
  done
  return 1
}

stop_server() {
  local deadline p
  [ -n "$SID" ] || return 0
  kill -TERM -- "-$SID" 2>/dev/null || true
  deadline=$((SECONDS + 3))
  while session_alive "$SID" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
  kill -KILL -- "-$SID" 2>/dev/null || true
  for p in $(pgrep -s "$SID" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  wait "$SID" 2>/dev/null || true
  SID=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

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

# ---------------------------------------------------------------------------------------------
# Rows.

label() {
  case "$1" in
    node-rr) echo "Node primary, NODE_CLUSTER_SCHED_POLICY=rr" ;;
    node-none) echo "Node primary, NODE_CLUSTER_SCHED_POLICY=none" ;;
    forkline-rr) echo "forkline --mode round-robin --ipc node" ;;
    forkline-steer) echo "forkline --mode steer --ipc node" ;;
    forkline-shared) echo "forkline --mode shared --ipc node (reference)" ;;
    *) echo "$1" ;;
  esac
}

# Why a row cannot run, or nothing.
why_skip() {
  case "$1" in
    node-rr | node-none) ;;
    forkline-rr | forkline-steer | forkline-shared)
      [ -x "$FL" ] || echo "no $FL (not built: cargo build -p forkline-cli, profile $PROFILE)" ;;
    *) echo "unknown configuration (node-rr node-none forkline-rr forkline-steer forkline-shared)" ;;
  esac
}

# start CONFIG PORT LOGFILE: sets SID.
start() {
  local cfg=$1 port=$2 logf=$3 addr=127.0.0.1:$2 mode
  case "$cfg" in
    node-rr | node-none)
      NODE_CLUSTER_SCHED_POLICY=${cfg#node-} setsid "$NODE_BIN" "$APP" "$addr" "$WORKERS" \
        >"$logf" 2>&1 </dev/null &
      SID=$! ;;
    forkline-*)
      mode=${cfg#forkline-}
      [ "$mode" = rr ] && mode="round-robin"
      # Its own name and control socket, so that no other cluster on the machine collides.
      setsid "$FL" run --ipc node --mode "$mode" -w "$WORKERS" --graceful-timeout 2s \
        --name "node-bench-$port" --control "$LOGS/control-$port.sock" \
        -- "$NODE_BIN" "$APP" "$addr" >"$logf" 2>&1 </dev/null &
      SID=$! ;;
  esac
}

# The pids the app's workers printed as `listening worker=ID pid=PID` and that are still alive.
worker_pids() {
  local p
  sed -nE 's/.*listening worker=[0-9]+ pid=([0-9]+).*/\1/p' "$1" | sort -un | while read -r p; do
    kill -0 "$p" 2>/dev/null && echo "$p"
  done
  return 0
}

http_probe() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/" 2>/dev/null | grep -q '^200$'
}

# status_field PORT KEY: one field of the forkline cluster on PORT's `forkline status --json`
# (empty for null, or when it does not answer).
status_field() {
  timeout 5 "$FL" status --control "$LOGS/control-$1.sock" --json 2>/dev/null |
    python3 -c 'import json, sys; v = json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$2" 2>/dev/null || true
}

# True while the server's first process (Node's or forkline's primary) runs (not a zombie).
leader_alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$SID/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ]
}

# wait_ready PORT LOGFILE: 0 when up, 1 when it did not come up in time, 2 when the server
# exited with status 2 (forkline refusing its command line) — its status is then in EXIT_CODE.
EXIT_CODE=""
wait_ready() {
  local port=$1 logf=$2 deadline=$((SECONDS + READY_TIMEOUT)) pids
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ! leader_alive; then
      EXIT_CODE=0
      wait "$SID" 2>/dev/null || EXIT_CODE=$?
      SID=""
      [ "$EXIT_CODE" = 2 ] && return 2
      return 1
    fi
    pids=$(worker_pids "$logf" | wc -l)
    if [ "$pids" -ge "$WORKERS" ] && http_probe "$port"; then return 0; fi
    sleep 0.1
  done
  return 1
}

# snapshot LOGFILE PIDS...: SIGUSR2 to each worker, then prints `PID REQUESTS CONNECTIONS` for
# each, in order, from the `served ... pid=PID requests=N connections=M` line it prints in
# answer (a worker that did not answer within SNAP_TIMEOUT is printed as `PID - -`).
snapshot() {
  local logf=$1 p deadline n
  shift
  declare -A before=()
  for p in "$@"; do
    before[$p]=$(grep -c "served worker=[0-9]* pid=$p " "$logf" || true)
    kill -USR2 "$p" 2>/dev/null || true
  done
  deadline=$((SECONDS + SNAP_TIMEOUT))
  for p in "$@"; do
    while :; do
      n=$(grep -c "served worker=[0-9]* pid=$p " "$logf" || true)
      if [ "$n" -gt "${before[$p]}" ]; then
        echo "$p $(grep "served worker=[0-9]* pid=$p " "$logf" | tail -n 1 |
          sed -nE 's/.*requests=([0-9]+) connections=([0-9]+).*/\1 \2/p')"
        break
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then echo "$p - -"; break; fi
      sleep 0.02
    done
  done
}

# served_in FIELD SNAP0 SNAP1: what each worker served between two snapshots (FIELD 2: requests,
# 3: connections), comma-separated in the workers' order, W values (0 for a worker missing:
# fewer than W listening); empty when a worker did not answer a snapshot.
served_in() {
  awk -v f="$1" -v w="$WORKERS" 'NR == FNR { a[FNR] = $f; next } { b[FNR] = $f; n = FNR }
    END { for (i = 1; i <= n; i++) { if (a[i] == "-" || b[i] == "-" || a[i] == "" || b[i] == "") exit; c[i] = b[i] - a[i] }
      for (; n < w; n++) c[n + 1] = 0
      s = c[1]; for (i = 2; i <= n; i++) s = s "," c[i]; print s }' \
    <(printf '%s\n' "$2") <(printf '%s\n' "$3")
}

# ---------------------------------------------------------------------------------------------
# One row in one round: start, wait, warm up, measure each workload, stop. Appends to $RAW
#   round cfg workload rps errors cv_fraction requests(,) connections(,) status handed_off
# (requests and connections served by each worker in the measurement, comma-separated;
# handed_off: connections forkline's primary handed over during it, forkline-rr only).
NOT_AVAILABLE=""
declare -A SKIP=() SEEN=()
run_row() {
  local cfg=$1 round=$2 port logf url w out rps errors pids cv counts conns status rc
  local want mode steering wrong="" h0 h1 handed
  port=$(free_port)
  logf=$LOGS/$cfg-r$round.log
  url=http://127.0.0.1:$port/
  log "round $round: $cfg, port $port"
  EXIT_CODE=""
  start "$cfg" "$port" "$logf"
  rc=0
  wait_ready "$port" "$logf" || rc=$?
  if [ "$rc" != 0 ]; then
    if [ "$rc" = 2 ] && [ "$cfg" = forkline-rr ]; then
      NOT_AVAILABLE=$(grep -m1 -i 'error' "$logf" || head -n 1 "$logf")
      SKIP[$cfg]="not available: the forkline built refuses it (exit 2: ${NOT_AVAILABLE:-no message})"
      log "  $cfg NOT AVAILABLE: $FL exited 2: $NOT_AVAILABLE"
      return 0
    fi
    status="did not start"
    [ -n "$EXIT_CODE" ] && [ -z "$SID" ] && status="exited $EXIT_CODE before it came up"
    log "  $cfg $status (see $logf)"
    stop_server
    for w in $WORKLOADS; do printf '%s\t%s\t%s\t\t\t\t\t\t%s\n' "$round" "$cfg" "$w" "$status" >>"$RAW"; done
    return 0
  fi
  mapfile -t pids < <(worker_pids "$logf")
  # A forkline row: is it running in the mode it was asked for?
  if [[ $cfg == forkline-* ]]; then
    want=${cfg#forkline-}
    [ "$want" = rr ] && want="round-robin"
    mode=$(status_field "$port" mode)
    steering=$(status_field "$port" steering)
    SEEN[$cfg]="mode ${mode:-?}${steering:+, steering $steering}"
    log "  forkline status: ${SEEN[$cfg]}"
    if [ "$mode" != "$want" ]; then
      wrong="wrong mode: forkline status says '${mode:-no answer}', not $want"
      log "  !!! $cfg: $wrong"
    fi
    if [ "$cfg" = forkline-steer ] && [ -n "$steering" ] && [ "$steering" != bpf-round-robin ]; then
      log "  !!! $cfg: steer mode is NOT BPF-steered here: steering=$steering (BPF refused?)"
    fi
  fi
  if [ "$WARMUP" != 0 ]; then
    timeout $((WARMUP + 10)) wrk -t2 -c"$CONC" -d"${WARMUP}s" "$url" >/dev/null 2>&1 || true
  fi
  local order
  read -ra order <<<"$WORKLOADS"
  # Alternate the order of the workloads by round (a row's second workload runs on a server
  # that has served more): reversed in even rounds.
  if [ $((round % 2)) = 0 ]; then
    local i rev=()
    for ((i = ${#order[@]} - 1; i >= 0; i--)); do rev+=("${order[$i]}"); done
    order=("${rev[@]}")
  fi
  for w in "${order[@]}"; do
    local args=(-t2 -c"$CONC" -d"${SECS}s")
    [ "$w" = close ] && args+=(-H 'Connection: close')
    local snap0 snap1
    handed=""
    [ "$cfg" = forkline-rr ] && h0=$(status_field "$port" handed_off_total)
    snap0=$(snapshot "$logf" "${pids[@]}")
    out=$(timeout $((SECS + 30)) wrk "${args[@]}" "$url" 2>&1 || true)
    snap1=$(snapshot "$logf" "${pids[@]}")
    if [ "$cfg" = forkline-rr ]; then
      h1=$(status_field "$port" handed_off_total)
      [ -n "$h0" ] && [ -n "$h1" ] && handed=$((h1 - h0))
    fi
    printf '== %s round %s\n%s\n' "$w" "$round" "$out" >>"$LOGS/wrk-$cfg.txt"
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    # Socket errors (connect/read/write/timeout) plus non-2xx/3xx responses.
    errors=$(awk '/Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} /Non-2xx or 3xx/ {n += $NF}
      END {print n + 0}' <<<"$out")
    counts=$(served_in 2 "$snap0" "$snap1")
    conns=$(served_in 3 "$snap0" "$snap1")
    cv=""
    [ -n "$counts" ] && cv=$(awk -v c="$counts" 'BEGIN { n = split(c, x, ","); for (i = 1; i <= n; i++) s += x[i]
      m = s / n; if (m == 0) exit; for (i = 1; i <= n; i++) v += (x[i] - m) ^ 2; printf "%.6f", sqrt(v / n) / m }')
    status=ok
    if [ -z "$rps" ]; then status="wrk failed"; rps=""; fi
    [ -n "$wrong" ] && status=$wrong
    if [ "$cfg" = forkline-rr ] && [ "$status" = ok ] && [ "${handed:-0}" -le 0 ]; then
      status="not round-robin: the primary handed off ${handed:-?} connections"
      log "  !!! $cfg $w: $status"
    fi
    log "  $w: ${rps:--} req/s, requests per worker ${counts:-?} (CV $(awk -v c="$cv" 'BEGIN { if (c == "") print "-"; else printf "%.1f%%", c * 100 }')), connections ${conns:-?}, errors $errors${handed:+, handed off by the primary $handed}"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$cfg" "$w" "$rps" "$errors" "$cv" "$counts" "$conns" "$status" "$handed" >>"$RAW"
  done
  if [ "${#pids[@]}" -lt "$WORKERS" ] || [ "$(worker_pids "$logf" | wc -l)" -ne "${#pids[@]}" ]; then
    log "  $cfg: a worker exited or restarted during the measurement (see $logf)"
    printf '%s\t%s\tnote\t\t\t\t\t\t%s\n' "$round" "$cfg" "worker exited" >>"$RAW"
  fi
  stop_server
}

# ---------------------------------------------------------------------------------------------
# Measure.
: >"$RAW"
RUNNABLE=()
for cfg in $CONFIGS; do
  reason=$(why_skip "$cfg")
  if [ -n "$reason" ]; then SKIP[$cfg]=$reason; log "skipping $cfg: $reason"; else RUNNABLE+=("$cfg"); fi
done
[ ${#RUNNABLE[@]} -gt 0 ] || die "nothing to run"
log "Node $NODE_VERSION ($NODE_BIN), forkline $FL, $WORKERS workers, $ROUNDS round(s) of ${SECS}s per workload"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
  n=${#RUNNABLE[@]}
  for i in $(seq 0 $((n - 1))); do
    cfg=${RUNNABLE[$(((i + round - 1) % n))]}
    [ -n "${SKIP[$cfg]:-}" ] && continue # forkline-rr found not available in an earlier round
    run_row "$cfg" "$round"
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Report: means over rounds; ratios between those means, and their range within one round.
aggregate() { # CONFIG WORKLOAD -> "rps errors cv n" (means; cv "-" when never known)
  awk -F'\t' -v c="$1" -v w="$2" '$2 == c && $3 == w && $9 == "ok" {
      n++; r += $4; e += $5; if ($6 != "") { v += $6; vn++ } }
    END { if (n) printf "%f %f %s %d\n", r/n, e/n, (vn ? v/vn : "-"), n }' "$RAW"
}
cv_range() { # CONFIG WORKLOAD -> lowest–highest CV % of one round
  awk -F'\t' -v c="$1" -v w="$2" '$2 == c && $3 == w && $9 == "ok" && $6 != "" {
      if (n == 0 || $6 < lo) lo = $6; if (n == 0 || $6 > hi) hi = $6; n++ }
    END { if (n) printf "%.1f–%.1f", lo * 100, hi * 100; else printf "-" }' "$RAW"
}
status_of() {
  local s
  if [ -n "${SKIP[$1]:-}" ]; then echo "${SKIP[$1]}"; return; fi
  s=$(awk -F'\t' -v c="$1" -v w="$2" '$2 == c && $3 == w && $9 != "ok" {print $9; exit}' "$RAW")
  echo "${s:-not run}"
}
round_ratios() { # CONFIG WORKLOAD BASE -> lowest–highest of CONFIG/BASE within one round
  awk -F'\t' -v c="$1" -v w="$2" -v b="$3" '$3 == w && $9 == "ok" && ($2 == c || $2 == b) {
      if ($2 == c) x[$1] = $4; else y[$1] = $4 }
    END { for (r in x) if (y[r] > 0) { q = x[r] / y[r]; if (n == 0 || q < lo) lo = q; if (n == 0 || q > hi) hi = q; n++ }
      if (n) printf "%.2f–%.2f", lo, hi; else printf "-" }' "$RAW"
}
splits() { # CONFIG WORKLOAD -> each round's connections per worker, "16/16 15/17 ..."
  awk -F'\t' -v c="$1" -v w="$2" '$2 == c && $3 == w && $9 == "ok" && $8 != "" { gsub(/,/, "/", $8); s = s (s == "" ? "" : " ") $8 }
    END { print (s == "" ? "-" : s) }' "$RAW"
}
handed_share() { # CONFIG WORKLOAD -> "H of C": connections the primary handed off, of those the workers counted (all rounds)
  awk -F'\t' -v c="$1" -v w="$2" '$2 == c && $3 == w && $9 == "ok" { h += $10; n = split($8, x, ","); for (i = 1; i <= n; i++) k += x[i] }
    END { printf "%d of %d", h, k }' "$RAW"
}
fmt_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a/b; else printf "-" }'; }
describe() {
  case "$1" in
    keepalive) echo "HTTP keep-alive: \`wrk -t2 -c$CONC -d${SECS}s\`" ;;
    close) echo "connection per request: \`wrk -t2 -c$CONC -d${SECS}s -H 'Connection: close'\`" ;;
  esac
}

{
  echo "# Node's cluster vs forkline --ipc node, $STAMP"
  echo
  echo "Node $NODE_VERSION (\`$NODE_BIN\`), app \`bench/node/cluster_http.js\` (one file under both primaries)," \
    "$WORKERS workers, forkline \`${FL#"$ROOT"/}\` at git $(git rev-parse --short HEAD 2>/dev/null || echo '-')." \
    "Machine: $(nproc) cores, $(uname -sr); load average before $LOAD_BEFORE, after $LOAD_AFTER."
  echo "$ROUNDS round(s), every row once per round in a rotated order, ${SECS}s per workload after ${WARMUP}s of warm-up;" \
    "req/s and CV are means over rounds, ratios are taken between those means (\"per round\": the lowest and" \
    "highest ratio within one round). CV: population stddev / mean of the requests each worker served" \
    "in the measurement (from the app's own counters). With keep-alive, the table also gives the" \
    "connections each worker accepted (wrk opens $CONC and keeps them), one split per round."
  for w in $WORKLOADS; do
    echo
    echo "$(describe "$w"):"
    echo
    # Keep-alive: which worker accepted each of wrk's connections decides the balance once.
    extra_h="" extra_sep="" extra_none=""
    [ "$w" = keepalive ] && extra_h=" connections per worker |" extra_sep=" ---: |" extra_none=" - |"
    echo "| config | req/s | ratio to node rr | per round | ratio to node none | per round | CV % | CV per round |$extra_h errors | notes |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |$extra_sep ---: | --- |"
    rr_rps=$(aggregate node-rr "$w" | cut -d' ' -f1)
    none_rps=$(aggregate node-none "$w" | cut -d' ' -f1)
    for cfg in $CONFIGS; do
      agg=$(aggregate "$cfg" "$w")
      if [ -z "$agg" ]; then
        echo "| $(label "$cfg") | - | - | - | - | - | - | - |$extra_none - | $(status_of "$cfg" "$w") |"
        continue
      fi
      read -r rps errors cv n <<<"$agg"
      notes=""
      [ "$n" -lt "$ROUNDS" ] && notes="$n of $ROUNDS rounds"
      exits=$(awk -F'\t' -v c="$cfg" '$2 == c && $3 == "note"' "$RAW" | wc -l)
      [ "$exits" -gt 0 ] && notes="${notes:+$notes; }a worker exited in $exits round(s)"
      [ -n "${SEEN[$cfg]:-}" ] && notes="${notes:+$notes; }status: ${SEEN[$cfg]}"
      [ "$cfg" = forkline-rr ] && notes="${notes:+$notes; }handed off by the primary: $(handed_share "$cfg" "$w") connections the workers counted"
      extra=""
      [ "$w" = keepalive ] && extra=" $(splits "$cfg" "$w") |"
      printf '| %s | %.0f | %s | %s | %s | %s | %s | %s |%s %.0f | %s |\n' "$(label "$cfg")" "$rps" \
        "$(fmt_ratio "$rps" "${rr_rps:-0}")" "$(round_ratios "$cfg" "$w" node-rr)" \
        "$(fmt_ratio "$rps" "${none_rps:-0}")" "$(round_ratios "$cfg" "$w" node-none)" \
        "$(awk -v c="$cv" 'BEGIN { if (c == "-") print "-"; else printf "%.1f", c * 100 }')" \
        "$(cv_range "$cfg" "$w")" "$extra" "$errors" "$notes"
    done
  done
  echo
  echo "Raw rows (per-worker counts included): \`${RAW#"$ROOT"/}\`; server logs and wrk outputs: \`${LOGS#"$ROOT"/}/\`."
} >"$RESULTS"

echo
cat "$RESULTS"
log "written $RESULTS"
[ -z "$NOT_AVAILABLE" ] || log "forkline-rr NOT AVAILABLE in this build: $NOT_AVAILABLE"

# A failed row never stops a full run (its table says why); a smoke run fails on it, and any
# run on a forkline-rr row (when it is one of BENCH_CONFIGS) that did not run, unless
# BENCH_REQUIRE_RR=0.
failed=0
if [[ " $CONFIGS " == *" forkline-rr "* ]]; then
  rr_missing=""
  if [ -n "${SKIP[forkline-rr]:-}" ]; then
    rr_missing=${SKIP[forkline-rr]}
  else
    for w in $WORKLOADS; do
      agg=$(aggregate forkline-rr "$w")
      if [ -z "$agg" ] || ! awk -v r="${agg%% *}" 'BEGIN { exit !(r > 0) }'; then
        rr_missing="${rr_missing:+$rr_missing; }$w: $(status_of forkline-rr "$w")"
      fi
    done
  fi
  if [ -n "$rr_missing" ]; then
    log "!!! the forkline round-robin row did not run: $rr_missing"
    if [ "$REQUIRE_RR" = 1 ]; then
      log "forkline-rr is required (BENCH_REQUIRE_RR=1, the default; 0 lets the run pass without it)"; failed=1
    fi
  fi
fi
if [ "$SMOKE" = 1 ]; then
  for cfg in "${!SKIP[@]}"; do
    [ "$cfg" = forkline-rr ] && continue # said above; fails unless BENCH_REQUIRE_RR=0
    log "smoke: $cfg was skipped: ${SKIP[$cfg]}"; failed=1
  done
  for cfg in "${RUNNABLE[@]}"; do
    [ -n "${SKIP[$cfg]:-}" ] && continue
    [ "$cfg" = forkline-rr ] && continue # said above; fails unless BENCH_REQUIRE_RR=0
    for w in $WORKLOADS; do
      agg=$(aggregate "$cfg" "$w")
      if [ -z "$agg" ] || ! awk -v r="${agg%% *}" 'BEGIN { exit !(r > 0) }'; then
        log "smoke: $cfg served nothing in $w: $(status_of "$cfg" "$w") (logs: $LOGS)"; failed=1
      fi
    done
  done
  [ "$failed" = 0 ] || { log "smoke run FAILED"; exit 1; }
  log "smoke run passed: ${#RUNNABLE[@]} rows x $(wc -w <<<"$WORKLOADS") workloads served${NOT_AVAILABLE:+ (forkline-rr not available)}"
fi
[ "$failed" = 0 ] || exit 1
