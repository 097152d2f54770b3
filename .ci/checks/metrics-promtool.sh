#!/usr/bin/env bash
# Checks the Prometheus side of shiptoken (issue 6):
#  1. promtool check rules / test rules on monitoring/alerts.yml;
#  2. promtool check metrics on a real scrape of `shiptoken serve --dev`, once its suspended
#     demo account is flagged;
#  3. a real Prometheus server (Debian's package, loopback only, 1 s scrape interval) scrapes
#     that daemon with alerts.yml loaded; its HTTP API must show the target up, the account
#     series, every rule evaluating without error, the suspended alert pending or firing,
#     and every query of monitoring/grafana-dashboard.json parsing and returning data.
# Everything it starts is stopped on exit. Needs root (or promtool/prometheus/curl installed).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

say() { printf '[metrics-promtool] %s\n' "$*"; }
fail() { printf '[metrics-promtool] FAIL: %s\n' "$*" >&2; exit 1; }

# --- tools ------------------------------------------------------------------------------
# shellcheck source=lib.sh.inc
. .ci/checks/lib.sh.inc
apt_install prometheus curl   # prometheus brings promtool and the server, /usr/bin/prometheus
bin=$root/target/debug/shiptoken
if [ ! -x "$bin" ]; then
    say "building shiptoken"
    cargo build --quiet
fi

# --- cleanup ----------------------------------------------------------------------------
work=$(mktemp -d)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        # Bounded: SIGKILL whatever has not stopped after 10 s.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
show_logs() {
    local f
    for f in "$work"/*.log; do
        [ -f "$f" ] || continue
        echo "--- $f (last 30 lines)" >&2
        tail -n 30 "$f" >&2
    done
}
trap 'show_logs' ERR

# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND every 0.2 s until it succeeds.
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || { show_logs; fail "timed out waiting for $what"; }
        sleep 0.2
    done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- 1. rules ---------------------------------------------------------------------------
say "promtool check rules"
promtool check rules monitoring/alerts.yml
say "promtool test rules"
promtool test rules monitoring/alerts.test.yml

# --- 2. a real scrape -------------------------------------------------------------------
say "starting shiptoken serve --dev"
"$bin" serve --dev >"$work/dev.out" 2>"$work/dev.log" &
pids+=($!)
metrics_url() { grep -o 'http://127\.0\.0\.1:[0-9]*/metrics' "$work/dev.out"; }
wait_for 30 "the dev daemon to print its metrics URL" metrics_url
url=$(metrics_url)
target=${url#http://}
target=${target%/metrics}
say "daemon metrics at $url"
suspended_flagged() {
    curl -fsS --max-time 2 "$url" | grep -Eq \
        '^shiptoken_account_status\{[^}]*account="demo-suspended"[^}]*status="suspended"\} 1$'
}
wait_for 60 "demo-suspended to be flagged suspended" suspended_flagged
# An application's calls through the proxy, so its series (and their dashboard panels)
# have data.
sock=$(grep -o -- '--socket [^ ]*' "$work/dev.out" | head -n1 | cut -d' ' -f2)
[ -S "$sock" ] || fail "no socket path in the dev daemon's output"
for _ in 1 2 3; do
    curl -fsS --max-time 5 --unix-socket "$sock" -H 'content-type: application/json' \
        -d '{"query": "query { user_quota { credits_remaining } }"}' \
        http://localhost/v1/proxy/shiphero/demo-active/graphql >/dev/null \
        || fail "a call through the proxy failed"
done
say "promtool check metrics"
curl -fsS --max-time 5 "$url" >"$work/scrape.txt"
if ! lint=$(promtool check metrics <"$work/scrape.txt" 2>&1) || [ -n "$lint" ]; then
    printf '%s\n' "$lint" >&2
    fail "promtool check metrics complained about the daemon's metrics"
fi
grep -q '^shiptoken_build_info{version="' "$work/scrape.txt" || fail "no shiptoken_build_info"
grep -q '^process_start_time_seconds ' "$work/scrape.txt" || fail "no process collector"

# --- 3. a real Prometheus server --------------------------------------------------------
prom_port=$(free_port)
prom=http://127.0.0.1:$prom_port
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $root/monitoring/alerts.yml
scrape_configs:
  - job_name: shiptoken
    static_configs:
      - targets: ["$target"]
YAML
say "starting prometheus on $prom scraping $target"
/usr/bin/prometheus --config.file="$work/prometheus.yml" \
    --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" \
    --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
wait_for 30 "prometheus to be ready" curl -fsS --max-time 2 "$prom/-/ready"

# api PATH PYTHON_CONDITION: GETs $prom$PATH and succeeds when the condition holds for `d`,
# the decoded JSON answer.
api() {
    curl -fsS --max-time 2 "$prom$1" | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d.get("status") == "success" and ('"$2"') else 1)'
}
wait_for 30 "the shiptoken target to be up" api /api/v1/targets \
    'any(t["labels"].get("job") == "shiptoken" and t["health"] == "up" for t in d["data"]["activeTargets"])'
say "target up"
query='shiptoken_account_status{account="demo-suspended",status="suspended"}'
wait_for 30 "Prometheus to have the suspended account's series" api \
    "/api/v1/query?query=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$query")" \
    '[r["value"][1] for r in d["data"]["result"]] == ["1"]'
say "query $query = 1"
wait_for 30 "the demo-active account's series" api \
    '/api/v1/query?query=shiptoken_account_status%7Baccount%3D%22demo-active%22%2Cstatus%3D%22active%22%7D' \
    '[r["value"][1] for r in d["data"]["result"]] == ["1"]'
rules_ok='all(r["health"] == "ok" for g in d["data"]["groups"] for r in g["rules"]) and sum(len(g["rules"]) for g in d["data"]["groups"]) > 0'
wait_for 30 "every rule to evaluate without error" api /api/v1/rules "$rules_ok"
if ! api /api/v1/rules "$rules_ok"; then fail "a rule does not evaluate"; fi
say "every rule evaluates"
wait_for 30 "the suspended alert to be pending or firing" api /api/v1/alerts \
    'any(a["labels"]["alertname"] == "ShiptokenAccountSuspended" and a["labels"].get("account") == "demo-suspended" and a["state"] in ("pending", "firing") for a in d["data"]["alerts"])'
say "ShiptokenAccountSuspended is active for demo-suspended"
if api /api/v1/alerts 'any(a["labels"]["alertname"] in ("ShiptokenDown", "ShiptokenAbsent", "ShiptokenSchedulerStalled") or (a["labels"]["alertname"] == "ShiptokenAccountSuspended" and a["labels"].get("account") != "demo-suspended") for a in d["data"]["alerts"])'; then
    curl -fsS "$prom/api/v1/alerts" >&2
    fail "an alert that must stay quiet is active"
fi
# Every dashboard query must parse and return data from this real Prometheus. A socket
# request first, so the socket series exist.
sock=$(grep -o -- '--socket [^ ]*' "$work/dev.out" | head -n 1 | cut -d' ' -f2)
curl -fsS --max-time 2 --unix-socket "$sock" http://localhost/v1/health >/dev/null
dashboard_queries() {
    python3 - "$prom" monitoring/grafana-dashboard.json "${1:-}" <<'PY'
import json, re, sys, urllib.parse, urllib.request
prom, path, verbose = sys.argv[1], sys.argv[2], sys.argv[3] == "-v"
dash = json.load(open(path))
exprs = []
for v in dash["templating"]["list"]:
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else q or ""
    m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
    if m:
        exprs.append((f"variable {v['name']}", m.group(1)))
for p in dash["panels"]:
    for t in p.get("targets", []):
        exprs.append((f"{p['title']} {t['refId']}", t["expr"]))
subst = {"$job": ".*", "$instance": ".*", "$account": ".*", "$__rate_interval": "15s", "$__range": "1h"}
bad = 0
for where, e in exprs:
    for k, v in subst.items():
        e = e.replace(k, v)
    url = f"{prom}/api/v1/query?query={urllib.parse.quote(e)}"
    try:
        d = json.load(urllib.request.urlopen(url, timeout=2))
    except Exception as x:  # an HTTP 400 carries the parse error
        d = {"status": "error", "error": str(getattr(x, "read", lambda: x)())}
    if d.get("status") != "success":
        bad += 1
        print(f"  {where}: {e}: {d.get('error')}", file=sys.stderr)
    elif not d["data"]["result"]:
        bad += 1
        if verbose:
            print(f"  {where}: no data: {e}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}
if ! (wait_for 20 "every dashboard query to return data" dashboard_queries); then
    dashboard_queries -v || true
    fail "a dashboard query fails or finds no data"
fi
say "every dashboard query returns data"
say "OK"
