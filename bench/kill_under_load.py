#!/usr/bin/env python3
"""bench/kill_under_load.py -- connections lost when reuseport workers are killed under load.

A 2-worker reuseport cluster (the test primary, crates/forkline/tests/bin/testbed.rs) serves
32 clients that connect, read the one-line reply to EOF and close, in a loop, for SECS seconds;
a worker is SIGKILLed KILLS times meanwhile (slots 0 and 1 in turn, evenly spread). Each round
runs once with reuseport migration off and once with it on (TB_MIGRATION=bpf), alternating,
and counts what the clients got:

  ok        a reply
  reset     ECONNRESET: a connection queued on (or half-open at) the killed worker's socket
            and dropped when the primary closed it -- what migration saves
  empty     EOF without a reply: a connection the killed worker had accepted but not answered
            (dies with it either way)
  refused   ECONNREFUSED (no socket listening)
  timeout   no reply within 5 s
  other     anything else

Workers killed within `min_uptime` (5 s by default) of their start are young: their slot
restarts after a backoff, and the primary closes their socket at once, which is where the
queued connections are lost or migrate. BENCH_MIN_UPTIME_MS=500 makes them stable instead
(restarted at once, the replacement inheriting the socket and its queue).

It runs in a network namespace of its own (it re-executes itself under `unshare -n`, as root),
so `net.ipv4.tcp_migrate_req` is 0 there whatever the machine has, and nothing else shares its
loopback. Knobs: BENCH_SECS=10 BENCH_KILLS=5 BENCH_ROUNDS=3 BENCH_CLIENTS=32
BENCH_MIN_UPTIME_MS, TESTBED (default target/$BENCH_PROFILE/forkline-testbed, BENCH_PROFILE
release by default). Build first:
  cargo build --release -p forkline --bin forkline-testbed
BENCH_SMOKE=1 checks that the script still works: one round of 2 s with 2 kills. A run whose
clients got no reply, or in which a kill found no worker to kill, fails the script (exit 1).
"""

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

SMOKE = os.environ.get("BENCH_SMOKE") == "1"
SECS = float(os.environ.get("BENCH_SECS", "2" if SMOKE else "10"))
KILLS = int(os.environ.get("BENCH_KILLS", "2" if SMOKE else "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1" if SMOKE else "3"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "32"))
MIN_UPTIME_MS = os.environ.get("BENCH_MIN_UPTIME_MS")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTBED = os.environ.get("TESTBED", os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
    os.environ.get("BENCH_PROFILE", "release"), "forkline-testbed"))
KINDS = ["ok", "reset", "empty", "refused", "timeout", "other"]


def log(*args):
    print("[kill_under_load]", *args, file=sys.stderr, flush=True)


def enter_private_netns():
    """Re-executes under `unshare -n` once, then brings loopback up."""
    if os.environ.get("KILL_UNDER_LOAD_NETNS") != "1":
        env = dict(os.environ, KILL_UNDER_LOAD_NETNS="1")
        os.execvpe("unshare", ["unshare", "-n", "--", sys.executable, *sys.argv], env)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
        assert f.read().strip() == "0", "a new namespace starts with tcp_migrate_req=0"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(port, deadline, counts, lock):
    mine = dict.fromkeys(KINDS, 0)
    while time.monotonic() < deadline:
        kind = "other"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                reply = b""
                while True:
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    reply += chunk
                kind = "ok" if reply.startswith(b"worker ") else "empty"
        except ConnectionResetError:
            kind = "reset"
        except ConnectionRefusedError:
            kind = "refused"
        except socket.timeout:
            kind = "timeout"
        except OSError:
            kind = "other"
        mine[kind] += 1
    with lock:
        for k, v in mine.items():
            counts[k] += v


def run(migration):
    port = free_port()
    env = dict(
        os.environ,
        TB_MODE="reuseport",
        TB_WORKERS="2",
        TB_LISTEN=f"127.0.0.1:{port}",
        TB_MIGRATION=migration,
    )
    if MIN_UPTIME_MS:
        env["TB_MIN_UPTIME_MS"] = MIN_UPTIME_MS
    tb = subprocess.Popen(
        [TESTBED],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    events = queue.Queue()
    serving = {}  # slot -> pid of the worker that listens there now

    def read_events():
        for line in tb.stdout:
            e = json.loads(line)
            if e.get("event") == "listening":
                serving[e["id"]] = e["pid"]
            events.put(e)

    threading.Thread(target=read_events, daemon=True).start()

    def wait_for(pred, what, timeout=30):
        end = time.monotonic() + timeout
        while True:
            try:
                e = events.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise SystemExit(f"timed out waiting for {what}")
            if pred(e):
                return e

    def command(line):
        tb.stdin.write(line + "\n")
        tb.stdin.flush()

    try:
        for _ in range(2):
            wait_for(lambda e: e.get("event") == "listening", "listening")
        command("status")
        status = wait_for(lambda e: e.get("command") == "status", "status")["migration"]
        counts, lock = dict.fromkeys(KINDS, 0), threading.Lock()
        start = time.monotonic()
        deadline = start + SECS
        clients = [
            threading.Thread(target=client, args=(port, deadline, counts, lock))
            for _ in range(CLIENTS)
        ]
        for t in clients:
            t.start()
        killed = 0
        for i in range(KILLS):
            at = start + SECS * (i + 0.5) / KILLS
            time.sleep(max(0, at - time.monotonic()))
            # SIGKILL by pid, as a crash or the OOM killer would (the testbed's `kill` command
            # is Node's worker.kill(), after which the slot is not restarted).
            pid = serving.get(i % 2)
            try:
                os.kill(pid, 9)
                killed += 1
            except (ProcessLookupError, TypeError):
                log(f"slot {i % 2} had no worker to kill")
        for t in clients:
            t.join()
        command("shutdown")
        tb.wait(timeout=30)
        if counts["ok"] == 0:
            raise SystemExit(f"kill_under_load: no client got a reply (migration {migration}): {counts}")
        if SMOKE and killed < KILLS:
            raise SystemExit(f"kill_under_load: {KILLS - killed} of {KILLS} kills found no worker")
        return status, counts
    finally:
        if tb.poll() is None:
            os.killpg(tb.pid, 9)
            tb.wait()


def main():
    enter_private_netns()
    if not os.access(TESTBED, os.X_OK):
        raise SystemExit(f"{TESTBED} missing; cargo build --release -p forkline --bin forkline-testbed")
    totals = {m: dict.fromkeys(KINDS, 0) for m in ("off", "bpf")}
    for r in range(1, ROUNDS + 1):
        order = ("off", "bpf") if r % 2 else ("bpf", "off")
        for migration in order:
            status, counts = run(migration)
            assert status == migration, f"asked for {migration}, status says {status}"
            log(f"round {r}, migration {migration}: " + ", ".join(f"{k} {counts[k]}" for k in KINDS))
            for k in KINDS:
                totals[migration][k] += counts[k]
    uptime = f"min_uptime {MIN_UPTIME_MS} ms" if MIN_UPTIME_MS else "min_uptime 5 s (default)"
    print(f"{ROUNDS} rounds of {SECS:g} s, {CLIENTS} clients, {KILLS} kills a round, {uptime}; sums:")
    print()
    print("| migration | replies | reset | empty (accepted, unanswered) | refused | timeout | other |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in ("off", "bpf"):
        t = totals[m]
        print(f"| {m} | {t['ok']} | {t['reset']} | {t['empty']} | {t['refused']} | {t['timeout']} | {t['other']} |")


if __name__ == "__main__":
    main()
