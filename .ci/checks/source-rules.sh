#!/usr/bin/env bash
# The two size and purpose rules of STYLE.md that no lint checks (issue 27): no file under
# src/ over 700 lines, and every .rs file under src/ opens with a `//!` line saying what the
# module owns and why. The simulators are exempt from the size rule (they are a protocol
# each, read top to bottom): src/sim/ and, under src/providers/, any `sim` folder or `sim.rs`.
# Names every offender, then fails; a clean tree prints one line.
set -euo pipefail
cd "$(dirname "$0")/../.."

MAX_LINES=700
failed=0

# Not a simulator: the size rule applies.
size_ruled() {
    case "$1" in
        # `*` in a case pattern also matches `/`: a sim folder or sim.rs at any depth.
        src/sim/* | src/providers/sim/* | src/providers/*/sim/*) return 1 ;;
        src/providers/sim.rs | src/providers/*/sim.rs) return 1 ;;
    esac
    return 0
}

while IFS= read -r -d '' file; do
    if size_ruled "$file"; then
        lines=$(wc -l <"$file")
        if [ "$lines" -gt "$MAX_LINES" ]; then
            echo "[source-rules] FAIL: $file has $lines lines (at most $MAX_LINES outside the simulators)" >&2
            failed=1
        fi
    fi
    case "$file" in
        *.rs)
            # The first line, not the first non-blank one: the purpose comes before anything.
            first=$(head -n1 "$file")
            if [[ "$first" != "//!"* ]]; then
                echo "[source-rules] FAIL: $file does not open with a //! line saying what it owns (first line: ${first:-<empty>})" >&2
                failed=1
            fi
            ;;
    esac
done < <(find src -type f -print0 | sort -z)

if [ "$failed" -ne 0 ]; then
    echo "[source-rules] failed: see STYLE.md (files under $MAX_LINES lines; every module opens with //!)" >&2
    exit 1
fi
echo "[source-rules] ok"
