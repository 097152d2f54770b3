#!/usr/bin/env bash
# The tests pass in a fresh clone inside a private folder (mode 0700, as most home folders
# are), with the target folder inside the clone: the tests that run clients as other uids
# must not need anything under the checkout, which those uids cannot reach.
#
# To keep CI time low this runs only the test binaries that switch uids (found by grepping
# tests/ for `.uid(`, so a new one is included by itself); the rest of the suite does not
# depend on where the checkout lives. The clone's target folder is seeded with a copy of
# this checkout's target/debug when there is one, so only shiptoken itself is rebuilt (its
# path changed), not every dependency. Needs root: as another user those tests skip.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

say() { printf '[private-clone] %s\n' "$*"; }
fail() { printf '[private-clone] FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root: the tests it runs switch uids and skip otherwise"

tests=$(grep -l '\.uid(' tests/*.rs | xargs -n1 basename | sed 's/\.rs$//' | sort)
[ -n "$tests" ] || fail "no test in tests/ switches uids; nothing to check"

private=$(mktemp -d)
trap 'rm -rf "$private"' EXIT
chmod 700 "$private"
[ "$(stat -c %a "$private")" = 700 ] || fail "$private is not mode 0700"

clone="$private/shiptoken"
git clone --quiet "$root" "$clone"
if [ -d target/debug ]; then
    mkdir -p "$clone/target"
    cp -a target/debug "$clone/target/debug"
fi

args=()
for t in $tests; do args+=(--test "$t"); done
say "cargo test --locked ${args[*]} in $clone (folder mode 0700)"
out="$private/test.log"
if ! (cd "$clone" && CARGO_TARGET_DIR="$clone/target" cargo test --locked "${args[@]}" -- --nocapture) >"$out" 2>&1; then
    tail -n 60 "$out" >&2
    fail "the tests fail in a clone inside a private folder"
fi
# A test that skipped proved nothing (--nocapture above lets its note through).
if grep -q 'skipped (needs root)' "$out"; then
    grep 'skipped (needs root)' "$out" >&2
    fail "tests were skipped"
fi
grep '^test result:' "$out"
say "OK: $(echo "$tests" | tr '\n' ' ')pass in a private clone"
