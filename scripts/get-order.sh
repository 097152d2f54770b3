#!/usr/bin/env bash
# Writes link/get.order: the functions of the release binary that `shiptoken get` runs, which
# build.rs has the linker place together (docs/socket.md, "One `get`"). Run it after a change
# to the `get` path, the command line or the dependencies (their symbol names carry hashes of
# the crate and its build, so a list from an older build matches less and less of a new one;
# names it no longer matches are skipped, which costs page faults, never a build).
#
# Both builds users get are traced: the default one (README, `cargo run --release`) and the
# package's (`--no-default-features --features postgres`), whose names differ. Each runs
# `get` under valgrind's callgrind against a `serve --dev` daemon: a token, `--json`, a flagged
# account, an unknown one, and no daemon at all. Needs valgrind; takes two release builds.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || {
    echo "get-order: valgrind is needed (apt-get install valgrind)" >&2
    exit 1
}
work=$(mktemp -d)
daemon=
cleanup() {
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked --no-default-features --features postgres --bin shiptoken
cp target/release/shiptoken "$work/shiptoken-package"
cargo build --release --locked --bin shiptoken
cp target/release/shiptoken "$work/shiptoken-default"

"$work/shiptoken-default" serve --dev >"$work/dev.log" 2>&1 &
daemon=$!
socket=
for _ in $(seq 300); do
    socket=$(sed -n 's/.*--socket \([^ ]*\) accounts list.*/\1/p' "$work/dev.log" | head -1)
    [ -n "$socket" ] && [ -S "$socket" ] && break
    sleep 0.1
done
[ -S "$socket" ] || {
    echo "get-order: the dev daemon did not start:" >&2
    cat "$work/dev.log" >&2
    exit 1
}

# The functions one run executed that `bin` defines, one mangled name a line.
trace() {
    local bin=$1
    shift
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/cg.out" \
        "$bin" "$@" >/dev/null 2>&1 || true
    grep -oE '^c?fn=\([0-9]+\) .*' "$work/cg.out" | sed -E "s/^c?fn=\([0-9]+\) //; s/'[0-9]+$//" |
        sort -u | comm -12 - <(nm --defined-only "$bin" | awk 'NF == 3 && $2 ~ /[tTwW]/ {print $3}' | sort -u)
}

: >"$work/first"
: >"$work/rest"
for build in default package; do
    bin="$work/shiptoken-$build"
    trace "$bin" --socket "$socket" get shiphero/demo-active >>"$work/first"
    trace "$bin" --socket "$socket" get --json shiphero/demo-active >>"$work/rest"
    trace "$bin" --socket "$socket" get shiphero/demo-suspended >>"$work/rest"
    trace "$bin" --socket "$socket" get shiphero/no-such-account >>"$work/rest"
    trace "$bin" --socket "$work/none.sock" get shiphero/demo-active >>"$work/rest"
done
{
    echo "# Written by scripts/get-order.sh on $(date -u +%Y-%m-%d) from $(git rev-parse --short HEAD):"
    echo "# the functions \`shiptoken get\` runs, placed together by the linker (build.rs)."
    sort -u "$work/first"
    sort -u "$work/rest" | comm -23 - <(sort -u "$work/first")
} >link/get.order
echo "get-order: link/get.order lists $(grep -vc '^#' link/get.order) functions"
echo "get-order: rebuild (cargo build --release) to link with it"
