#!/usr/bin/env bash
# The Shippo OAuth callback pages in a real browser. Starts `shiptoken serve --dev` (its
# simulated Shippo is also the OAuth host), then has headless Chromium load each page the
# callback can answer: "connected" by following the authorize link through the simulated
# Shippo exactly as a user's browser would, and "declined", "link not valid" and "exchange
# failed" by bringing the callback what Shippo or an attacker would. Each page's text is
# checked in the DOM Chromium built, and screenshots at phone and desktop sizes are saved
# under target/screenshots/. Every load spends a link, so each one gets a fresh account.
# Uses target/debug/shiptoken as built by .ci/run; status codes and headers are covered by
# tests/oauth.rs.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=lib.sh.inc
source .ci/checks/lib.sh.inc

BIN=target/debug/shiptoken
SHOTS=target/screenshots
[ -x "$BIN" ] || { echo "oauth-pages: $BIN is missing; run cargo build first" >&2; exit 1; }
command -v chromium >/dev/null 2>&1 || apt_install chromium
mkdir -p "$SHOTS"

work=$(mktemp -d)
daemon_pid=""
cleanup() {
    if [ -n "$daemon_pid" ]; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$BIN" serve --dev >"$work/dev.out" 2>"$work/dev.err" &
daemon_pid=$!

# Dev mode prints its socket once it is ready; wait for that, not for a fixed time.
socket=""
for _ in $(seq 1 300); do
    socket=$(sed -n 's/.*shiptoken --socket \([^ ]*\) accounts list.*/\1/p' "$work/dev.out" | head -n1)
    [ -n "$socket" ] && break
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/dev.err" >&2; echo "oauth-pages: dev mode exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$socket" ] || { cat "$work/dev.err" >&2; echo "oauth-pages: dev mode did not become ready" >&2; exit 1; }

# Prints a fresh authorize URL for a new account, numbered in a file since callers run it
# in a subshell.
authorize_url() {
    local n
    n=$(( $(cat "$work/count" 2>/dev/null || echo 0) + 1 ))
    echo "$n" >"$work/count"
    "$BIN" --socket "$socket" shippo connect "pages-$1-$n" | grep -o 'http://[^ ]*' | head -n1
}
# The callback base (decoded redirect_uri) and the state of an authorize URL.
callback_of() { sed -n 's/.*[?&]redirect_uri=\([^&]*\).*/\1/p' <<<"$1" | sed 's/%3A/:/gI; s/%2F/\//gI'; }
state_of() { sed -n 's/.*[?&]state=\([^&]*\).*/\1/p' <<<"$1"; }

# The URL that shows page $1 (a fresh one on every call).
page_url() {
    local url cb st
    url=$(authorize_url "$1")
    [ -n "$url" ] || { echo "oauth-pages: shippo connect printed no URL" >&2; return 1; }
    cb=$(callback_of "$url")
    st=$(state_of "$url")
    case "$1" in
        connected) echo "$url" ;;
        declined) echo "${cb}?error=access_denied&error_description=The+user+denied+access&state=${st}" ;;
        bad-state) echo "${cb}?code=forged&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" ;;
        exchange-failed) echo "${cb}?code=not-a-real-code&state=${st}" ;;
    esac
}

chrome() {
    local profile
    profile=$(mktemp -d "$work/profile.XXXXXX")
    timeout 90 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --hide-scrollbars --user-data-dir="$profile" "$@" 2>>"$work/chromium.log"
}

failed=0
check_page() {
    local name=$1 expect=$2 dom
    dom=$(chrome --dump-dom "$(page_url "$name")")
    if grep -qF -- "$expect" <<<"$dom" && grep -qF 'name="viewport"' <<<"$dom" && ! grep -qi '<script' <<<"$dom"; then
        echo "ok   $name: \"$expect\""
    else
        echo "FAIL $name: expected \"$expect\" in the page Chromium rendered:" >&2
        echo "$dom" >&2
        failed=1
    fi
    chrome --screenshot="$SHOTS/oauth-$name-phone.png" --window-size=390,844 "$(page_url "$name")" >/dev/null
    chrome --screenshot="$SHOTS/oauth-$name-desktop.png" --window-size=1280,800 "$(page_url "$name")" >/dev/null
    for size in phone desktop; do
        [ -s "$SHOTS/oauth-$name-$size.png" ] || { echo "FAIL $name: no $size screenshot" >&2; failed=1; }
    done
}

check_page connected "Shippo account pages-connected-1 connected"
check_page declined "was not connected"
check_page bad-state "This connection link is not valid"
check_page exchange-failed "invalid_grant"

# The account connected through the browser is served with the headers applications need.
# Captured first: with pipefail, `| grep -q` would race the CLI's remaining writes.
served=$("$BIN" --socket "$socket" get shippo/pages-connected-1 --json || true)
grep -qF '"Shippo-API-Version"' <<<"$served" \
    || { echo "FAIL the token connected through the browser is not served" >&2; failed=1; }

if [ "$failed" -ne 0 ]; then
    echo "--- dev mode log" >&2
    tail -n 50 "$work/dev.err" >&2
    exit 1
fi
echo "oauth-pages: all pages render; screenshots in $SHOTS/"
