#!/usr/bin/env python3
"""The PromQL half of tests/promql/run.sh (which starts and stops the processes).

Subcommands:
  wait URL [--timeout S]                  wait until URL answers 200
  config --out F --targets F --exporter A write a Prometheus config derived from
                                          scripts/prometheus/prometheus.yml: 1 s scrapes and
                                          rule evaluations, the exporter at A as its only target
  check --classic URL --native URL --exporter A
                                          evaluate every PromQL expression in rules.yml and the
                                          dashboard against both Prometheus servers (one started
                                          without, one with --enable-feature=native-histograms);
                                          print a summary line per server and a total

What `check` asserts, and the rule it uses for alerts:
  * every recording rule's expression returns data, and so does the series it records;
  * every rule Prometheus loaded evaluates without error (health "ok" in /api/v1/rules);
  * an alert's expression is empty while nothing is wrong, so it is taken apart instead: split
    at top-level `and`/`or`/`unless` (dropping their on()/ignoring() modifiers), and each
    operand's top-level comparison with a number is removed (`x > 0.05` -> `x`; a comparison
    between two vectors checks both sides). Every piece must return data: that proves every
    metric, label and value the alert selects exists and that its vector matching works;
  * every dashboard target and template-variable query returns data, with $instance, $daemon,
    $model -> `.*` (the variables' "All") and $__rate_interval -> 1m;
  * every inferd_* name used is in docs/metrics.md (or is a recorded series): a histogram family
    by its bare name (how native histograms are stored and queried) or with _bucket, _sum or
    _count (the classic series); those suffixes on any other name are not accepted;
  * the duration histograms are stored the way each server should store them. The classic server
    has X_bucket and no bare X. The native server, when the exporter answers Prometheus'
    protobuf Accept header (A is probed), has bare X as native histograms and no X_bucket; when
    it answers text, the native server stores classic buckets too and is checked as classic;
  * every expression that reads a duration histogram both ways (`native or classic`, as the
    latency quantiles do) gets its answer from the half that the server stores: that half
    returns data, the other none, and the whole expression returns exactly that half's result,
    with at least one finite value (not the NaN of a histogram without observations).
These checks run on both servers; each result line names its server.
Expressions that use a metric marked "GPU only" in docs/metrics.md are skipped with the
reason "no GPU" while the exporter's NVML is down; with NVML up they are checked as well.
Only the Python standard library and PyYAML (run.sh installs it if missing).
"""

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

# The HTTP helpers the Prometheus-driven test scripts share, in tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prometheus_api import PrometheusAPI, QueryError, wait  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "scripts/prometheus/rules.yml"
PROMETHEUS_YML = REPO / "scripts/prometheus/prometheus.yml"
DASHBOARD = REPO / "scripts/grafana/inferd-dashboard.json"
CATALOG = REPO / "docs/metrics.md"

# Grafana's built-in interval variables, as a 1 s scrape interval makes them.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# The histograms the exporter serves natively (schema 3) as well as in classic buckets.
DURATION_HISTOGRAMS = ("inferd_request_duration_seconds", "inferd_queue_wait_seconds", "inferd_compute_seconds")
# What Prometheus 2.42 started with --enable-feature=native-histograms sends (scrape/scrape.go).
NATIVE_ACCEPT = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,"
                 "application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,"
                 "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(Inf|NaN)$")


# --- helpers for HTTP -------------------------------------------------------------------------

class Prometheus(PrometheusAPI):
    def query(self, expr, at):
        data = self.api("query", query=expr, time=f"{at:.3f}")
        if data["resultType"] in ("scalar", "string"):
            return [data["result"]]
        return data["result"]


# --- the catalog ------------------------------------------------------------------------------

def catalog():
    """Metric name -> (GPU only, type), from the tables in docs/metrics.md."""
    names = {}
    for line in CATALOG.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and re.fullmatch(r"`[a-z_:]+`", cells[0]) and cells[4] in ("yes", "no"):
            names[cells[0].strip("`")] = (cells[4] == "yes", cells[1])
    if not names:
        raise SystemExit(f"promql: no metric rows found in {CATALOG}")
    missing = [n for n in DURATION_HISTOGRAMS if names.get(n, (None, None))[1] != "histogram"]
    if missing:
        raise SystemExit(f"promql: {CATALOG} does not list {', '.join(missing)} as histograms")
    return names


def metric_names(expr):
    """Identifiers in an expression that look like metric names (strings removed)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    return {m.group(0) for m in IDENT.finditer(bare)}


def base_name(name, names):
    """The catalog name a series name belongs to: itself, or the histogram family whose classic
    _bucket/_sum/_count series it is. A native histogram is stored under the family's bare name,
    which is itself a catalog name."""
    if name in names:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            family = name[: -len(suffix)]
            if names.get(family, (None, None))[1] == "histogram":
                return family
    return name


def histogram_halves(expr):
    """For an expression that reads a duration histogram both natively and from its classic
    buckets: (native operands, classic operands) of its top-level `or`. None otherwise."""
    used = metric_names(expr)
    families = [f for f in DURATION_HISTOGRAMS if f in used or f + "_bucket" in used]
    if not any(f in used and f + "_bucket" in used for f in families):
        return None
    native, classic = [], []
    for operand in split_set_operators(expr):
        names = metric_names(operand)
        if any(f + "_bucket" in names for f in families):
            classic.append(operand)
        elif any(f in names for f in families):
            native.append(operand)
    return native, classic


# --- taking alert expressions apart -------------------------------------------------------------

def top_level(expr):
    """Yields (index, char) for characters outside brackets and string literals."""
    depth = 0
    quote = None
    i = 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\" and quote != "`":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            yield i, c
        i += 1


def unwrap(expr):
    """Removes parentheses around the whole expression."""
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, c in enumerate(expr):
            depth += c == "("
            depth -= c == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr
        expr = expr[1:-1].strip()
    return expr


MODIFIER = re.compile(r"^\s*(bool\s+)?((on|ignoring)\s*\([^)]*\)\s*)?((group_left|group_right)\s*(\([^)]*\))?\s*)?")


def strip_modifiers(expr):
    return expr[MODIFIER.match(expr).end():]


def split_set_operators(expr):
    expr = unwrap(expr)
    cuts = []
    for i, _ in top_level(expr):
        m = re.match(r"(and|or|unless)\b", expr[i:])
        if m and (i == 0 or not re.match(r"[A-Za-z0-9_:]", expr[i - 1])):
            cuts.append((i, i + len(m.group(1))))
    if not cuts:
        return [expr]
    parts, start = [], 0
    for begin, end in cuts:
        parts.append(expr[start:begin])
        start = end
    parts.append(expr[start:])
    operands = []
    for part in parts:
        operands.extend(split_set_operators(strip_modifiers(part)))
    return operands


def strip_comparison(expr):
    expr = unwrap(expr)
    chars = list(top_level(expr))
    for n, (i, c) in enumerate(chars):
        nxt = expr[i + 1] if i + 1 < len(expr) else ""
        if c in "=!" and nxt == "=" or c in "<>":
            width = 2 if nxt == "=" else 1
            lhs, rhs = expr[:i].strip(), strip_modifiers(expr[i + width:]).strip()
            if NUMBER.match(unwrap(rhs)):
                return [lhs]
            return [lhs] + strip_comparison(rhs)
    return [expr]


def alert_pieces(expr):
    pieces = []
    for operand in split_set_operators(expr):
        pieces.extend(p for p in strip_comparison(operand) if p)
    return pieces


# --- what to check ----------------------------------------------------------------------------

VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr, variables):
    unknown = []

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in variables:
            return variables[name]
        unknown.append(name)
        return m.group(0)

    out = VAR.sub(repl, expr)
    if unknown:
        raise QueryError(f"unknown template variable(s) {', '.join(sorted(set(unknown)))}")
    return out


def checks_from_rules():
    doc = yaml.safe_load(RULES.read_text())
    out, recorded = [], set()
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                recorded.add(rule["record"])
                out.append((f"record {rule['record']}{labels_text(rule)}: expr", rule["expr"], None))
                selector = rule["record"] + labels_selector(rule)
                out.append((f"record {rule['record']}{labels_text(rule)}: recorded series", selector, None))
            else:
                for n, piece in enumerate(dict.fromkeys(alert_pieces(rule["expr"])), 1):
                    out.append((f"alert {rule['alert']} piece {n}", piece, None))
    return out, recorded


def labels_text(rule):
    labels = rule.get("labels") or {}
    return "".join(f" {k}={v}" for k, v in sorted(labels.items()))


def labels_selector(rule):
    labels = rule.get("labels") or {}
    if not labels:
        return ""
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def checks_from_dashboard():
    dash = json.loads(DASHBOARD.read_text())
    variables = dict(BUILTINS)
    out = []
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            variables[var["name"]] = var.get("allValue") or ".*"
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query)
        if not m:
            out.append((f"variable {var['name']}", query, "unsupported"))
            continue
        out.append((f"variable {var['name']}", substitute(m.group(1), variables), m.group(2)))
    for panel in walk_panels(dash.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                label = f"panel {panel.get('title')!r} {target.get('refId', '')}"
                try:
                    out.append((label, substitute(target["expr"], variables), None))
                except QueryError as e:
                    out.append((label, target["expr"], f"error:{e}"))
    return out


def walk_panels(panels):
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def exporter_serves_protobuf(exporter):
    """Whether the exporter answers a native-histograms Prometheus' scrape in protobuf: only then
    does that Prometheus get (and store) native histograms."""
    request = urllib.request.Request(f"http://{exporter}/metrics", headers={"Accept": NATIVE_ACCEPT})
    with urllib.request.urlopen(request, timeout=10.0) as resp:
        resp.read()
        return resp.headers.get("Content-Type", "").startswith("application/vnd.google.protobuf")


def result_set(result):
    """A query result as a comparable set: (labels, value or histogram) per series."""
    return {(tuple(sorted(s.get("metric", {}).items())), json.dumps(s.get("value") or s.get("histogram"), sort_keys=True))
            for s in result}


def check_halves(prom, expr, at, stores):
    """None if the half of `native or classic` that the server stores gives the answer, else why not."""
    native, classic = histogram_halves(expr)
    if not native or not classic:
        return "reads a duration histogram both natively and from _bucket inside one operand of `or`"
    answering, silent = (native, classic) if stores == "native" else (classic, native)
    expected = set()
    for operand in answering:
        result = prom.query(operand, at)
        if not result:
            return f"its {stores} half returned no data: {' '.join(operand.split())}"
        expected |= result_set(result)
    other = "classic" if stores == "native" else "native"
    for operand in silent:
        if prom.query(operand, at):
            return f"its {other} half returned data on a server that stores {stores} histograms: {' '.join(operand.split())}"
    result = prom.query(expr, at)
    if result_set(result) != expected:
        return f"its result is not its {stores} half's result"
    # NaN is what histogram_quantile answers for a histogram that did not move: the load ran
    # within the window, so a quantile of it must be a number.
    if not any(s.get("value") and s["value"][1] not in ("NaN", "+Inf", "-Inf") for s in result):
        return f"every value is NaN or infinite: {[s.get('value') for s in result][:3]}"
    return None


def check_storage(prom, at, stores):
    """(label, expr, reason or None) per duration histogram: stored the way `stores` says."""
    out = []
    for family in DURATION_HISTOGRAMS:
        bare, buckets = prom.query(family, at), prom.query(f"{family}_bucket", at)
        label = f"storage of {family}"
        if stores == "native":
            if not bare:
                out.append((label, family, "no native histogram stored"))
            elif not all("histogram" in s for s in bare):
                out.append((label, family, "stored as floats, not native histograms"))
            elif buckets:
                # Prometheus 2.42 with native histograms keeps only the native part of a histogram
                # that has native buckets; a _bucket series here is one the exporter sent without.
                out.append((label, f"{family}_bucket", f"classic buckets stored too: {', '.join(sorted({str(s['metric']) for s in buckets})[:3])}"))
            else:
                out.append((label, family, None))
        elif not buckets:
            out.append((label, f"{family}_bucket", "no classic buckets stored"))
        elif bare:
            out.append((label, family, "a native histogram (bare name) stored on a classic server"))
        else:
            out.append((label, f"{family}_bucket", None))
    return out


def check_server(server, prom, names, stores):
    """Checks one Prometheus; `stores` is the kind of duration histogram it should hold."""
    gpu_only = {n for n, (gpu, _) in names.items() if gpu}
    at = time.time()
    nvml_up = any(float(s["value"][1]) == 1 for s in prom.query("inferd_nvml_up", at))
    inferd_on_gpu = bool(prom.query('inferd_model_info{device!="cpu"}', at))
    rule_checks, recorded = checks_from_rules()
    all_checks = rule_checks + checks_from_dashboard()

    passed, failed, skipped = [], [], []
    for label, expr, reason in check_storage(prom, at, stores):
        (failed.append((label, expr, reason)) if reason else passed.append(label))

    for label, expr, extra in all_checks:
        if extra == "unsupported":
            failed.append((label, expr, "only label_values(selector, label) queries are checked"))
            continue
        if extra and extra.startswith("error:"):
            failed.append((label, expr, extra[len("error:"):]))
            continue
        used = {base_name(n, names) for n in metric_names(expr)}
        unknown = sorted(n for n in used if n.startswith("inferd_") and n not in names and n not in recorded)
        if unknown:
            failed.append((label, expr, f"not in docs/metrics.md: {', '.join(unknown)}"))
            continue
        gpu = sorted(used & gpu_only)
        if gpu and not nvml_up:
            skipped.append((label, expr, f"no GPU ({', '.join(gpu)})"))
            continue
        if "inferd_gpu_process_memory_bytes" in used and not inferd_on_gpu:
            skipped.append((label, expr, "inferd runs no model on a GPU here"))
            continue
        try:
            result = prom.query(expr, at)
            halves = histogram_halves(expr) and check_halves(prom, expr, at, stores)
        except (QueryError, urllib.error.URLError, OSError) as e:
            failed.append((label, expr, str(e)))
            continue
        if not result:
            failed.append((label, expr, "returned no data"))
        elif extra and not any(extra in s.get("metric", {}) for s in result):
            failed.append((label, expr, f"no series has the label {extra!r}"))
        elif halves:
            failed.append((label, expr, halves))
        else:
            passed.append(label)

    # Every rule Prometheus loaded has evaluated, without error.
    loaded = 0
    for group in prom.api("rules")["groups"]:
        for rule in group["rules"]:
            loaded += 1
            label = f"rule health {rule['name']}"
            if rule.get("health") != "ok":
                failed.append((label, rule.get("query", ""), f"health {rule.get('health')}: {rule.get('lastError', '')}"))
            else:
                passed.append(label)
    want = sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    if loaded != want:
        failed.append(("rules loaded", str(RULES), f"Prometheus loaded {loaded} rules, rules.yml has {want}"))

    for label, expr, reason in skipped:
        print(f"skip  [{server}] {label}: {reason}")
    for label, expr, reason in failed:
        print(f"FAIL  [{server}] {label}: {reason}\n        {' '.join(expr.split())}")
    firing = prom.query("ALERTS", at)
    if firing:
        active = sorted({f"{s['metric'].get('alertname')} ({s['metric'].get('alertstate')})" for s in firing})
        print(f"note  [{server}] alerts active in the test (expected with no GPU: NVMLDown): {', '.join(active)}")
    print(f"promql: [{server}, {stores} histograms] {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
    return len(passed), len(failed), len(skipped)


def check(classic_url, native_url, exporter):
    names = catalog()
    protobuf = exporter_serves_protobuf(exporter)
    if not protobuf:
        print("note  the exporter answers the native server's protobuf Accept header with text, so that "
              "server stores classic buckets too and is checked as classic")
    servers = [("classic", classic_url, "classic"), ("native", native_url, "native" if protobuf else "classic")]
    totals = [0, 0, 0]
    for server, url, stores in servers:
        for i, n in enumerate(check_server(server, Prometheus(url), names, stores)):
            totals[i] += n
    print(f"promql: {totals[0]} passed, {totals[1]} failed, {totals[2]} skipped on {len(servers)} servers")
    return 1 if totals[1] else 0


def make_config(out, targets, exporter):
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(RULES)]
    # Firing alerts must not reach a real Alertmanager on this machine's :9093.
    config.pop("alerting", None)
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == "inferd"]
    if len(jobs) != 1:
        raise SystemExit(f"promql: {PROMETHEUS_YML} has no single job named inferd")
    jobs[0]["scrape_timeout"] = "1s"
    jobs[0]["file_sd_configs"] = [{"files": [str(targets)], "refresh_interval": "5s"}]
    Path(targets).write_text(yaml.safe_dump([{"targets": [exporter], "labels": {"site": "promql-test"}}]))
    Path(out).write_text(yaml.safe_dump(config, sort_keys=False))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wait")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=30.0)
    p = sub.add_parser("config")
    p.add_argument("--out", required=True)
    p.add_argument("--targets", required=True)
    p.add_argument("--exporter", required=True)
    p = sub.add_parser("check")
    p.add_argument("--classic", required=True, help="Prometheus started without native histograms")
    p.add_argument("--native", required=True, help="Prometheus started with --enable-feature=native-histograms")
    p.add_argument("--exporter", required=True, help="the exporter's host:port, probed for protobuf")
    args = parser.parse_args()
    if args.command == "wait":
        return wait(args.url, args.timeout, "promql")
    if args.command == "config":
        return make_config(args.out, args.targets, args.exporter)
    return check(args.classic, args.native, args.exporter)


if __name__ == "__main__":
    sys.exit(main())
