#!/usr/bin/env bash
# Writes link/hot.order: the functions of the release binary that run, which build.rs has the
# linker place together (docs/socket.md, "Ahead of pizauth"; docs/scale.md). First those of
# `shiptoken get`, so a `get` touches a few pages of code; then the daemon's, so the code a
# running daemon uses is a compact run of pages rather than most of the 7 MB of `.text`.
#
# Run it after a change to what runs, or to the dependencies: the symbol names carry hashes of
# each crate's build, so a list from an older build matches less and less of a new one. lld
# skips the names it does not find, which costs page faults and memory, never a build.
#
# Both builds users get are covered: the default one (README, `cargo run --release`) and the
# package's (`--no-default-features --features postgres`), whose names differ in those hashes.
# `get` runs under valgrind's callgrind in each, against a `serve --dev` daemon: a token,
# `--json`, a flagged account, an unknown one, no daemon at all. The daemon's functions come
# from the default build run by fleet_bench, socket_bench and proxy_bench under callgrind; for
# the package build they are the same names with the hashes matched by name. Needs valgrind
# (with callgrind_control) and two release builds.
set -euo pipefail
export LC_ALL=C # sort, comm and join must agree on the order
cd "$(dirname "$0")/.."
for tool in valgrind callgrind_control; do
    command -v "$tool" >/dev/null || {
        echo "link-order: $tool is needed" >&2
        exit 1
    }
done
work=$(mktemp -d)
daemon=
cleanup() {
    if [ -n "$daemon" ]; then
        kill "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p link
cargo build --release --locked --no-default-features --features postgres --bin shiptoken
cp target/release/shiptoken "$work/shiptoken-package"
cargo build --release --locked --bin shiptoken
cp target/release/shiptoken "$work/shiptoken-default"

# The text symbols `bin` defines, one a line, sorted.
defined() {
    nm --defined-only "$1" | awk 'NF == 3 && $2 ~ /[tTwW]/ {print $3}' | sort -u
}
# The functions of `bin` (the first argument) that the callgrind outputs after it name, one a
# line, sorted.
named_in() {
    local bin=$1
    shift
    grep -ohE '^c?fn=\([0-9]+\) .*' "$@" | sed -E "s/^c?fn=\([0-9]+\) //; s/'[0-9]+$//" |
        sort -u | comm -12 - <(defined "$bin")
}
# Waits for `serve --dev`'s socket, named in its log `$1`.
dev_socket() {
    local socket=
    for _ in $(seq 600); do
        socket=$(sed -n 's/.*--socket \([^ ]*\) accounts list.*/\1/p' "$1" | head -1)
        if [ -n "$socket" ] && [ -S "$socket" ]; then
            echo "$socket"
            return
        fi
        sleep 0.1
    done
    echo "link-order: the dev daemon did not start:" >&2
    cat "$1" >&2
    exit 1
}

# The daemon: the benchmarks' daemons under callgrind (a sweep of 300 accounts with its
# start-up and registry, token reads, proxied calls), each dumped every few seconds, since the
# benchmarks stop their daemon with SIGKILL. Not `serve --dev`: its simulators would be
# counted as the daemon's code.
cargo build --release --locked --example fleet_bench --example socket_bench --example proxy_bench
cat >"$work/traced-daemon" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --dump-instr=no --callgrind-out-file=$work/daemon.%p.cg $work/shiptoken-default "\$@"
EOF
chmod +x "$work/traced-daemon"
traced_bench() {
    "target/release/examples/$1" "${@:2}" >"$work/$1.log" 2>&1 &
    local bench=$!
    while kill -0 "$bench" 2>/dev/null; do
        sleep 3
        callgrind_control -d >/dev/null 2>&1 || true
    done
    wait "$bench" || true # slowed by valgrind, they miss their targets
}
traced_bench fleet_bench --accounts 300 --latency 20ms --idle 20s --bin "$work/traced-daemon"
traced_bench socket_bench --requests 300 --seconds 3 --rounds 2 --daemon "$work/traced-daemon"
traced_bench proxy_bench --requests 200 --seconds 3 --rounds 2 --daemon "$work/traced-daemon"
named_in "$work/shiptoken-default" "$work"/daemon.*.cg* >"$work/daemon-default"

# `get`, in both builds, against a dev daemon.
"$work/shiptoken-default" serve --dev >"$work/dev.log" 2>&1 &
daemon=$!
socket=$(dev_socket "$work/dev.log")
: >"$work/get-default"
: >"$work/get-package"
for build in default package; do
    bin="$work/shiptoken-$build"
    for line in "get shiphero/demo-active" "get --json shiphero/demo-active" \
        "get shiphero/demo-suspended" "get shiphero/no-such-account"; do
        # shellcheck disable=SC2086 # the words of the line are meant to split
        valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/get.cg" \
            "$bin" --socket "$socket" $line >/dev/null 2>&1 || true
        named_in "$bin" "$work/get.cg" >>"$work/get-$build"
    done
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/get.cg" \
        "$bin" --socket "$work/none.sock" get shiphero/demo-active >/dev/null 2>&1 || true
    named_in "$bin" "$work/get.cg" >>"$work/get-$build"
done

# The package build's daemon functions: the default list's names, matched to the package
# binary's by the name without its hashes (legacy `17h<hash>E`, v0 `Cs<disambiguator>_`),
# where exactly one package symbol has that name.
unhashed() { sed -E 's/17h[0-9a-f]{16}E$/E/; s/Cs[0-9A-Za-z]*_//g'; }
defined "$work/shiptoken-package" >"$work/package-syms"
paste <(unhashed <"$work/package-syms") "$work/package-syms" | sort -t $'\t' -k1,1 |
    awk -F '\t' '{n[$1]++; s[$1]=$2} END {for (k in n) if (n[k] == 1) print k "\t" s[k]}' |
    sort -t $'\t' -k1,1 >"$work/package-keys"
paste <(unhashed <"$work/daemon-default") "$work/daemon-default" | sort -t $'\t' -k1,1 |
    join -t $'\t' -o 2.2 - "$work/package-keys" | sort -u >"$work/daemon-package"

{
    echo "# Written by scripts/link-order.sh on $(date -u +%Y-%m-%d) from $(git rev-parse --short HEAD):"
    echo "# the functions \`shiptoken get\` runs, then those the daemon runs, placed together by"
    echo "# the linker in this order (build.rs)."
    cat "$work/get-default" "$work/get-package" | awk '!seen[$0]++'
    cat "$work/daemon-default" "$work/daemon-package" | sort -u |
        comm -23 - <(cat "$work/get-default" "$work/get-package" | sort -u)
} >link/hot.order
echo "link-order: link/hot.order lists $(grep -vc '^#' link/hot.order) functions:" \
    "get $(sort -u "$work/get-default" | wc -l) + $(sort -u "$work/get-package" | wc -l)," \
    "daemon $(wc -l <"$work/daemon-default") + $(wc -l <"$work/daemon-package") (default + package build)"
echo "link-order: rebuild (cargo build --release) to link with it"
