"""Reads a token from shiptoken and waits for each new one (Python standard library only).

usage: watch_token.py SOCKET PROVIDER/ACCOUNT [CHANGES]
Prints one line per token or status it sees; stops after CHANGES changes (default: never).
"""
import http.client
import json
import socket
import sys
import urllib.parse


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over shiptoken's Unix socket, kept alive between requests."""

    def __init__(self, path, timeout=330):  # longer than the longest wait (300 s)
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def fetch(conn, account, wait=None, known=None):
    """GET /v1/tokens/ACCOUNT; with wait, answers once the token differs from `known`."""
    query = {k: v for k, v in (("wait", wait), ("known", known)) if v is not None}
    url = "/v1/tokens/" + account + ("?" + urllib.parse.urlencode(query) if query else "")
    conn.request("GET", url)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def describe(status, body):
    if status == 200:  # never print the token itself
        return f"token {body['fingerprint']} refresh_after {body['refresh_after']}"
    return f"{status} {body['error']}: {body['message']}"


def main():
    path, account = sys.argv[1], sys.argv[2]
    changes = int(sys.argv[3]) if len(sys.argv) > 3 else None
    conn = UnixHTTPConnection(path)
    status, body = fetch(conn, account)
    print(describe(status, body), flush=True)
    # What we have: the token's fingerprint, or the error code of a refusal.
    known = body.get("fingerprint") or body.get("error")
    seen = 0
    while changes is None or seen < changes:
        status, body = fetch(conn, account, wait=300, known=known)
        now = body.get("fingerprint") or body.get("error")
        if now != known:  # else the wait simply timed out: ask again
            print(describe(status, body), flush=True)
            known, seen = now, seen + 1
        # A real client would now hand body["headers"] to its API calls.


if __name__ == "__main__":
    main()
