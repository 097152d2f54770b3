#!/usr/bin/env bash
# Validates monitoring/grafana-dashboard.json without Grafana: it is JSON with the fields an
# import needs, the data source is the DS_PROMETHEUS variable everywhere (no fixed uid),
# panels are laid out on the 24-column grid with unique ids, and every metric a query or an
# alert rule names is one src/metrics.rs exports (or the process collector's, or `up`).
# metrics-promtool.sh additionally runs every dashboard query against a real Prometheus.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 - monitoring/grafana-dashboard.json src/metrics.rs monitoring/alerts.yml <<'PY'
import json, re, sys

dash_path, metrics_rs, alerts_path = sys.argv[1:4]
errors = []
def err(msg):
    errors.append(msg)

# The metric names the daemon exports, read from the source that defines them.
# src/metrics.rs and its children (src/metrics/*.rs, such as the proxy's series).
import glob, os
src = open(metrics_rs).read()
for child in sorted(glob.glob(os.path.join(os.path.splitext(metrics_rs)[0], "*.rs"))):
    src += open(child).read()
names = set(re.findall(r'"(shiptoken_[a-z0-9_]+)"', src))
histograms = set(re.findall(r'HistogramOpts::new\(\s*"(shiptoken_[a-z0-9_]+)"', src))
known = set(names) - histograms
for h in histograms:
    known |= {h + "_bucket", h + "_sum", h + "_count"}
# prometheus crate's ProcessCollector, and Prometheus's own series.
known |= {"process_cpu_seconds_total", "process_open_fds", "process_max_fds",
          "process_virtual_memory_bytes", "process_resident_memory_bytes",
          "process_start_time_seconds", "process_threads", "up"}
if "shiptoken_account_status" not in known or not histograms:
    err(f"could not read the metric names from {metrics_rs}")

# Words in PromQL that are not metric names.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "rate", "irate", "increase", "delta", "idelta",
    "deriv", "histogram_quantile", "time", "vector", "scalar", "absent", "absent_over_time",
    "label_replace", "label_join", "clamp_min", "clamp_max", "abs", "ceil", "floor", "round",
    "changes", "resets", "sort", "sort_desc", "timestamp", "max_over_time", "min_over_time",
    "avg_over_time", "sum_over_time", "count_over_time", "last_over_time", "predict_linear",
    "humanizeDuration", "printf", "label_values",
}

def metric_names(expr):
    # Drop strings, label matchers and range/offset durations, then keep identifiers.
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r'\{[^}]*\}', '', e)
    e = re.sub(r'\[[^\]]*\]', '', e)
    e = re.sub(r'\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', r'\1', e)
    out = set()
    for m in re.finditer(r'(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w(])', e):
        word = m.group(1)
        if word in PROMQL_WORDS or re.fullmatch(r'\d.*', word):
            continue
        out.add(word)
    # Function calls are followed by "(": exclude them; they are not metrics.
    return out

def check_expr(where, expr):
    used = metric_names(expr)
    if not used:
        err(f"{where}: query names no metric: {expr}")
    for name in sorted(used - known):
        err(f"{where}: unknown metric {name!r} in {expr}")

try:
    dash = json.load(open(dash_path))
except (OSError, json.JSONDecodeError) as e:
    print(f"FAIL: {dash_path} is not valid JSON: {e}", file=sys.stderr)
    sys.exit(1)

for key in ("title", "uid", "panels", "templating", "schemaVersion"):
    if key not in dash:
        err(f"dashboard has no {key!r}")
if not (36 <= int(dash.get("schemaVersion", 0)) <= 41):
    err(f"schemaVersion {dash.get('schemaVersion')} is not one current Grafana imports as is (36-41)")
if dash.get("id") is not None:
    err("id must be null so the import creates a dashboard instead of overwriting one")

VAR = "${DS_PROMETHEUS}"
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
ds_var = variables.get("DS_PROMETHEUS")
if not ds_var or ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
    err("templating needs a variable DS_PROMETHEUS of type datasource with query prometheus")
for inp in dash.get("__inputs", []):
    if inp.get("name") != "DS_PROMETHEUS" or inp.get("pluginId") != "prometheus":
        err(f"unexpected __inputs entry {inp}")

def check_ds(where, ds):
    if ds is None:
        err(f"{where}: no datasource")
    elif isinstance(ds, str):
        if ds not in (VAR, "$DS_PROMETHEUS"):
            err(f"{where}: datasource {ds!r} is not the DS_PROMETHEUS variable")
    elif ds.get("uid") != VAR or ds.get("type") != "prometheus":
        err(f"{where}: datasource {ds} is not {{type: prometheus, uid: {VAR}}}")

for name, v in variables.items():
    if v.get("type") == "query":
        check_ds(f"variable {name}", v.get("datasource"))
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else q or ""
        m = re.fullmatch(r'label_values\((.*),\s*\w+\)', q)
        if m:
            check_expr(f"variable {name}", m.group(1))

# Every "datasource" anywhere in the document must be the variable (the built-in annotation
# source is Grafana's own and carries no uid of ours).
def walk(node, path):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource" and not path.startswith("annotations"):
                check_ds(path or "dashboard", v)
            walk(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, f"{path}[{i}]")
walk({k: v for k, v in dash.items() if k != "templating"}, "")

panels = []
for p in dash.get("panels", []):
    panels.append(p)
    panels.extend(p.get("panels", []))
ids = [p.get("id") for p in panels]
if len(ids) != len(set(ids)) or None in ids:
    err(f"panel ids must be present and unique: {ids}")
cells = {}
queries = 0
for p in panels:
    title = p.get("title") or f"panel {p.get('id')}"
    g = p.get("gridPos", {})
    if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] < 0 or g["x"] + g["w"] > 24:
        err(f"{title}: bad gridPos {g}")
        continue
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            if (x, y) in cells:
                err(f"{title}: overlaps {cells[(x, y)]}")
                break
            cells[(x, y)] = title
    if p.get("type") == "row":
        continue
    if not p.get("type"):
        err(f"{title}: no type")
    check_ds(title, p.get("datasource"))
    targets = p.get("targets") or []
    if not targets:
        err(f"{title}: no queries")
    refs = [t.get("refId") for t in targets]
    if len(refs) != len(set(refs)):
        err(f"{title}: duplicate refIds {refs}")
    for t in targets:
        check_ds(f"{title} {t.get('refId')}", t.get("datasource"))
        expr = t.get("expr", "")
        if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
            err(f"{title}: unbalanced brackets in {expr}")
        check_expr(title, expr)
        queries += 1

# The alert rules must only name exported metrics too.
rules = open(alerts_path).read()
lines = rules.splitlines()
for i, line in enumerate(lines):
    m = re.match(r'^(\s*)expr:\s*(.*)$', line)
    if not m:
        continue
    expr = m.group(2)
    if expr in ("|", ">", "|-", ">-"):
        # A block scalar: the lines indented deeper than `expr:`.
        body = []
        for nxt in lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= len(m.group(1)):
                break
            body.append(nxt.strip())
        expr = " ".join(body)
    check_expr(f"{alerts_path} line {i + 1}", expr)
for name in sorted(set(re.findall(r'\bshiptoken_[a-z0-9_]+', rules)) - known):
    err(f"{alerts_path}: unknown metric {name}")

# Every exported shiptoken metric should appear on the dashboard.
shown = set()
for p in panels:
    for t in p.get("targets") or []:
        shown |= metric_names(t.get("expr", ""))
for h in histograms:
    if h + "_bucket" in shown:
        shown.add(h)
missing = sorted(n for n in names if n not in shown and n not in {h + s for h in histograms for s in ("_bucket", "_sum", "_count")})
if missing:
    err(f"exported but not on the dashboard: {', '.join(missing)}")

if errors:
    for e in errors:
        print(f"FAIL: {e}", file=sys.stderr)
    sys.exit(1)
print(f"[metrics-dashboard] OK: {len(panels)} panels, {queries} queries, every data source is {VAR}, "
      f"every metric is one of the {len(names)} shiptoken metrics src/metrics.rs exports")
PY
