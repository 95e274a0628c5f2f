#!/usr/bin/env bash
# scripts/public-api.sh — the `forkline` library's public API against its committed snapshot,
# crates/forkline/public-api.txt, so that a change to the API is a decision, not an accident.
#
#   scripts/public-api.sh            # compare: exit 1 with the difference when the API changed
#   scripts/public-api.sh --update   # write the snapshot from the code (commit it with the change)
#
# The API comes from rustdoc's JSON output (unstable, so RUSTC_BOOTSTRAP=1 lets the stable
# toolchain write it), turned into one sorted line per public item by scripts/public_api.py:
# items by every public path, signatures, fields, variants, trait impls (README.md, "Changing
# the public API"). A new toolchain can change how a line is written; --update then, too.
set -euo pipefail
cd "$(dirname "$0")/.."

update=0
case "${1:-}" in
  --update) update=1 ;;
  "") ;;
  *) echo "usage: scripts/public-api.sh [--update]" >&2; exit 2 ;;
esac

snapshot=crates/forkline/public-api.txt
# A target directory of its own: with RUSTC_BOOTSTRAP set, some dependencies' build scripts
# (thiserror's) answer differently, and sharing target/ would rebuild them and everything
# above them at each switch between this and cargo build or test.
target=${CARGO_TARGET_DIR:-target}/public-api
json=$target/doc/forkline.json
rm -f "$json"
# The library with its default features, as a dependent gets it.
RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$target \
  cargo rustdoc -q -p forkline -- -Z unstable-options --output-format json
[ -f "$json" ] || { echo "public-api.sh: rustdoc wrote no $json" >&2; exit 1; }
current=$(mktemp -t forkline-public-api-XXXXXX)
trap 'rm -f "$current"' EXIT
python3 scripts/public_api.py "$json" >"$current"

if [ "$update" = 1 ]; then
  cp "$current" "$snapshot"
  echo "public-api.sh: wrote $snapshot ($(grep -vc '^#' "$snapshot") lines); commit it with the API change"
  exit 0
fi
if [ ! -f "$snapshot" ]; then
  echo "public-api.sh: no $snapshot; write it with scripts/public-api.sh --update" >&2
  exit 1
fi
if ! diff -u --label "$snapshot (committed)" --label "$snapshot (the code now)" "$snapshot" "$current"; then
  cat >&2 <<EOF
public-api.sh: the public API of the forkline library changed (- the committed snapshot, + the
code). If the change is deliberate, regenerate the snapshot and commit it with the change:
    scripts/public-api.sh --update
A removed or changed line breaks users of the library (a breaking change: say so in the
commit); added lines alone do not.
EOF
  exit 1
fi
echo "public-api.sh: the public API matches $snapshot ($(grep -vc '^#' "$snapshot") lines)"
