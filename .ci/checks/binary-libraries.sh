#!/usr/bin/env bash
# The binary loads only libc (and the dynamic loader itself): every shared library costs each
# process (a `get` in a script's loop included) its mappings, relocations and page faults.
# libm was dropped by defining `pow` in src/main.rs, and libgcc_s by linking GCC's static
# unwinder (build.rs; docs/socket.md); a new call into libm brings it back, and this check says
# which symbols did.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/debug/shiptoken}
[ -x "$bin" ] || cargo build --locked --bin shiptoken
needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
echo "[binary-libraries] $bin needs: $needed"
for lib in $needed; do
    case "$lib" in
        libc.so.6 | ld-linux-x86-64.so.2) ;;
        *)
            from=$(nm -D --undefined-only "$bin" | awk '{print $2}' | sed 's/@.*//' | sort -u |
                comm -12 - <(nm -D --defined-only "/lib/x86_64-linux-gnu/$lib" 2>/dev/null |
                    awk '{print $3}' | sed 's/@.*//' | sort -u) | tr '\n' ' ')
            echo "[binary-libraries] FAIL: $bin loads $lib (for: ${from:-?})" >&2
            exit 1
            ;;
    esac
done
echo "[binary-libraries] ok"
