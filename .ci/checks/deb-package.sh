#!/usr/bin/env bash
# The Debian package builds with cargo-deb and holds what an install needs: the binary, both
# units, sysusers.d and tmpfiles.d files, the example config as a conffile, the docs; its
# postinst creates the user and enables and starts nothing.
#
# The package carries no simulator, dev mode or movable clock, and does carry the shared
# PostgreSQL registry: `cargo deb` builds `--release --no-default-features --features postgres`
# (Cargo.toml: default-features = false, features = ["postgres"]), and the check greps the
# packaged binary for a string only the simulators have (src/sim/mod.rs SERVER_HEADER), after
# making sure a default build does contain it, and for the PostgreSQL change feed's channel
# (src/registry/postgres/mod.rs CHANNEL).
#
# Packs a debug build without default features (stripped, fast compression), so the check
# costs a minute, not a release build; `cargo deb` makes the real release package. That
# build replaces target/debug/shiptoken for a moment; the default one is put back on exit
# (cargo keeps both, so that takes a second) for the checks that run `serve --dev`.
# Installing cargo-deb the first time compiles it (about 5 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v cargo-deb >/dev/null; then
    echo "installing cargo-deb from crates.io"
    # A debug build of the tool compiles in a third of the time and packs just as well.
    cargo install cargo-deb --locked --quiet --debug
fi
[ -x target/debug/shiptoken ] || { echo "error: target/debug/shiptoken missing; run cargo build first" >&2; exit 1; }

# Only the simulators have this string; a default build must contain it, or the check
# below proves nothing.
marker=$(sed -n 's/^pub const SERVER_HEADER: &str = "\([^"]*\)";$/\1/p' src/sim/mod.rs)
[ -n "$marker" ] || { echo "error: no SERVER_HEADER marker in src/sim/mod.rs" >&2; exit 1; }
if [ "$(grep -cF -- "$marker" target/debug/shiptoken || true)" = 0 ]; then
    echo "error: the default build lacks the simulators' marker \"$marker\"" >&2
    exit 1
fi

out=$(mktemp -d)
trap 'rm -rf "$out"; cargo build --locked --quiet --bin shiptoken' EXIT
cargo build --locked --quiet --no-default-features --features postgres --bin shiptoken
scripts/dist-assets.sh target/debug/shiptoken >/dev/null
cargo deb --no-build --profile dev --fast --output "$out/" --quiet >/dev/null
deb=$(ls "$out"/shiptoken_*.deb)
echo "built $(basename "$deb") ($(du -h "$deb" | cut -f1))"

contents=$(dpkg-deb -c "$deb" | awk '{ print $1, $6 }')
fail=0
want() { # want MODE PATH
    if ! grep -qx -- "$1 ./$2" <<<"$contents"; then
        echo "error: the package lacks $2 with mode $1" >&2
        fail=1
    fi
}
want -rwxr-xr-x usr/bin/shiptoken
want -rw-r--r-- usr/lib/systemd/system/shiptoken.service
want -rw-r--r-- usr/lib/systemd/system/shiptoken.socket
want -rw-r--r-- usr/lib/sysusers.d/shiptoken.conf
want -rw-r--r-- usr/lib/tmpfiles.d/shiptoken.conf
want -rw-r--r-- etc/shiptoken/shiptoken.toml
want -rw-r--r-- usr/share/doc/shiptoken/README.systemd.md
want -rw-r--r-- usr/share/doc/shiptoken/copyright
want -rw-r--r-- usr/share/man/man1/shiptoken.1.gz
want -rw-r--r-- usr/share/bash-completion/completions/shiptoken
want -rw-r--r-- usr/share/zsh/vendor-completions/_shiptoken
want -rw-r--r-- usr/share/fish/vendor_completions.d/shiptoken.fish

# The files are the ones in the repo, byte for byte.
x="$out/x"
dpkg-deb -x "$deb" "$x"
cmp systemd/shiptoken.service "$x/usr/lib/systemd/system/shiptoken.service"
cmp systemd/shiptoken.socket "$x/usr/lib/systemd/system/shiptoken.socket"
cmp systemd/shiptoken.sysusers "$x/usr/lib/sysusers.d/shiptoken.conf"
cmp systemd/shiptoken.tmpfile "$x/usr/lib/tmpfiles.d/shiptoken.conf"
cmp config/shiptoken.toml "$x/etc/shiptoken/shiptoken.toml"
"$x/usr/bin/shiptoken" --help >/dev/null
# No simulator in the package, and its `serve --dev` says where dev mode is (exit 2).
sims=$(grep -cF -- "$marker" "$x/usr/bin/shiptoken" || true)
if [ "$sims" != 0 ]; then
    echo "error: the packaged binary contains the simulators (\"$marker\" found)" >&2
    fail=1
fi
set +e
dev_err=$("$x/usr/bin/shiptoken" serve --dev 2>&1 >/dev/null)
dev_code=$?
set -e
if [ "$dev_code" != 2 ] || ! grep -q 'cargo run --features dev' <<<"$dev_err"; then
    echo "error: the packaged serve --dev exited $dev_code: $dev_err" >&2
    fail=1
fi
# PostgreSQL support in the package (the `postgres` feature).
channel=$(sed -n 's/^pub const CHANNEL: &str = "\([^"]*\)";$/\1/p' src/registry/postgres/mod.rs)
[ -n "$channel" ] || { echo "error: no CHANNEL in src/registry/postgres/mod.rs" >&2; exit 1; }
if [ "$(grep -cF -- "$channel" "$x/usr/bin/shiptoken" || true)" = 0 ]; then
    echo "error: the packaged binary lacks PostgreSQL support (\"$channel\" not found)" >&2
    fail=1
fi
zcat "$x/usr/share/man/man1/shiptoken.1.gz" | grep -q '^.TH shiptoken 1'
grep -q 'complete -F _shiptoken' "$x/usr/share/bash-completion/completions/shiptoken"

ctl="$out/ctl"
dpkg-deb -e "$deb" "$ctl"
grep -qx /etc/shiptoken/shiptoken.toml "$ctl/conffiles" \
    || { echo "error: /etc/shiptoken/shiptoken.toml is not a conffile" >&2; fail=1; }
grep -q 'systemd-sysusers .*shiptoken.conf' "$ctl/postinst" \
    || { echo "error: postinst does not run systemd-sysusers" >&2; fail=1; }
grep -q 'systemd-tmpfiles --create shiptoken.conf' "$ctl/postinst" \
    || { echo "error: postinst does not create /run/shiptoken" >&2; fail=1; }
# Nothing is enabled or started on a fresh install: every `deb-systemd-helper enable` sits
# under `was-enabled` (re-enabling on upgrade only), and nothing but try-restart is invoked.
enables=$(grep -c 'deb-systemd-helper enable' "$ctl/postinst" || true)
guards=$(grep -c 'deb-systemd-helper --quiet was-enabled' "$ctl/postinst" || true)
if [ "$enables" != "$guards" ] || grep -Eq 'deb-systemd-invoke +(start|restart)' "$ctl/postinst"; then
    echo "error: postinst enables or starts a unit on install" >&2
    fail=1
fi
dpkg-deb -f "$deb" Depends | grep -q systemd-sysusers \
    || { echo "error: Depends lacks a provider of systemd-sysusers" >&2; fail=1; }
# A binary with packed relative relocations (build.rs) needs glibc 2.36 through a version
# reference that names no symbol, which dpkg-shlibdeps ($auto) does not see: it computes
# libc6 (>= 2.34), and the package would install where the binary cannot start.
if objdump -p "$x/usr/bin/shiptoken" | grep -q GLIBC_ABI_DT_RELR; then
    dpkg-deb -f "$deb" Depends | grep -q 'libc6 (>= 2.36)' \
        || { echo "error: the binary needs GLIBC_ABI_DT_RELR but Depends lacks libc6 (>= 2.36)" >&2; fail=1; }
fi

# `cargo deb` itself (the release package) builds without the dev feature too.
awk '/^\[package\.metadata\.deb\]/ { s = 1; next } /^\[/ { s = 0 } s' Cargo.toml \
    | grep -qx 'default-features = false' \
    || { echo "error: [package.metadata.deb] lacks default-features = false" >&2; fail=1; }
awk '/^\[package\.metadata\.deb\]/ { s = 1; next } /^\[/ { s = 0 } s' Cargo.toml \
    | grep -qx 'features = \["postgres"\]' \
    || { echo "error: [package.metadata.deb] lacks features = [\"postgres\"]" >&2; fail=1; }

[ "$fail" = 0 ] || exit 1
echo "deb package: ok (no simulator in the binary, PostgreSQL support in it)"
