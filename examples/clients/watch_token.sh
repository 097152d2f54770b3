#!/bin/sh
# Reads a token from shiptoken and waits for the next one (shell: shiptoken and curl >= 7.84).
# usage: watch_token.sh SOCKET PROVIDER/ACCOUNT
set -eu
sock=$1
account=$2
url="http://localhost/v1/tokens/$account"

# The bare token, for a script that needs just that:
token=$(shiptoken --socket "$sock" get "$account")
echo "got a token of ${#token} characters"

# The whole answer: token, expiry, refresh_after and the headers to send upstream.
curl -sS --unix-socket "$sock" "$url" >/dev/null

# Wait for the next token: the ETag of an answer is the fingerprint of its token.
known=$(curl -sS --unix-socket "$sock" -o /dev/null -w '%header{etag}' "$url" | tr -d '"')
echo "have $known"
while :; do
    out=$(curl -sS --unix-socket "$sock" -o /dev/null -w '%{http_code} %header{etag}' \
        "$url?wait=300&known=$known")
    code=${out%% *}
    next=$(echo "${out#* }" | tr -d '"')
    if [ "$code" != 200 ]; then
        echo "no usable token (HTTP $code); see: shiptoken accounts list" >&2
        exit 1
    fi
    if [ "$next" != "$known" ]; then # else the wait timed out: ask again
        echo "new $next"
        break
    fi
done
