#!/usr/bin/env bash
# Checks the Prometheus and Grafana files without a running Prometheus:
#   promtool check config  scripts/prometheus/prometheus.yml (with rules.yml and targets/*.yml)
#   promtool check rules   scripts/prometheus/rules.yml
#   promtool test rules    scripts/prometheus/rules_test.yml
# and that every alert carries a severity, summary, description and `for:`, and is tested both
# firing and silent; that every recording rule is tested; and that the dashboard is valid JSON
# whose queries all go through its ${datasource} variable; and that every rule and dashboard query
# reading a duration histogram reads it both natively and from its classic series, so that it
# answers on a Prometheus with native histograms as well as on one without (README, "Native
# histograms"). tests/promql/run.sh evaluates every expression against both kinds of real
# Prometheus.
# Every alert has a runbook_url whose anchor is its own section of docs/runbook.md, each section
# says what the alert means, how to confirm it and what to do, and the runbook's PromQL parses
# (promtool) and names only metrics of docs/metrics.md and recording rules of rules.yml.
# Then scripts/alertmanager/check.sh: amtool check-config, the routing tests and the inhibition
# checks of scripts/alertmanager/alertmanager.yml.
set -euo pipefail
cd "$(dirname "$0")/prometheus"
command -v promtool >/dev/null || { echo "check-rules: promtool is missing: run scripts/setup-prometheus.sh" >&2; exit 1; }
if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "check-rules: installing PyYAML"
  python3 -m pip install --quiet pyyaml
fi

promtool check config prometheus.yml
promtool check rules rules.yml
promtool test rules rules_test.yml

python3 - <<'EOF'
import json
import re
import sys

import yaml

failures = []
rules = yaml.safe_load(open("rules.yml"))
tests = yaml.safe_load(open("rules_test.yml"))

# The alerts the deployment relies on (docs and runbooks name them).
required = {"InferdDown", "HighErrorRate", "HighLatencyP99", "QueueSaturated", "DeadlineMisses",
            "SafetyRejectionSurge", "GPUOverheating", "GPUMemoryHigh", "GPUThrottled", "NVMLDown",
            "ExporterScrapeSlow"}
alerts, records = {}, set()
for group in rules["groups"]:
    for rule in group["rules"]:
        if "alert" in rule:
            alerts[rule["alert"]] = rule
        else:
            records.add(rule["record"])
for name in sorted(required - alerts.keys()):
    failures.append(f"alert {name} is missing from rules.yml")

for name, rule in alerts.items():
    if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
        failures.append(f"alert {name}: severity label must be critical, warning or info")
    for key in ("summary", "description"):
        if not rule.get("annotations", {}).get(key):
            failures.append(f"alert {name}: no {key} annotation")
    if "for" not in rule:
        failures.append(f"alert {name}: no for: (write `for: 0m` with a comment if it should fire at once)")

# Runbook links: the project's doc base (Cargo.toml's repository, as in the systemd units'
# Documentation=) + docs/runbook.md#anchor, the anchor being GitHub's for the alert's heading.
repository = re.search(r'^repository\s*=\s*"([^"]+)"', open("../../Cargo.toml").read(), re.M).group(1)
runbook_base = f"{repository.rstrip('/')}/docs/runbook.md#"
def anchor(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
runbook = open("../../docs/runbook.md").read()
sections = {}
for m in re.finditer(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", runbook, re.M | re.S):
    sections[anchor(m.group(1))] = m.group(2)
for name, rule in alerts.items():
    url = rule.get("annotations", {}).get("runbook_url", "")
    if not url.startswith(runbook_base):
        failures.append(f"alert {name}: runbook_url {url!r} does not start with {runbook_base}")
        continue
    target = url[len(runbook_base):]
    if target != anchor(name):
        failures.append(f"alert {name}: runbook_url points at #{target}, not at its own section #{anchor(name)}")
    body = sections.get(target)
    if body is None:
        failures.append(f"alert {name}: docs/runbook.md has no section with anchor #{target} (a heading `## {name}`)")
        continue
    for part in ("**Means.**", "**Confirm.**", "**Act"):
        if part not in body:
            failures.append(f"alert {name}: its runbook section has no {part}")
    confirm = body[body.find("**Confirm.**"):body.find("**Act")]
    if "```promql" not in confirm and "shmdump" not in confirm:
        failures.append(f"alert {name}: its runbook section confirms it with neither PromQL nor shmdump")

# The runbook's PromQL: it must parse (promtool checks it as recording rules) and name only
# metrics the exporter serves (docs/metrics.md) and series rules.yml records.
runbook_exprs = re.findall(r"^```promql\n(.*?)^```", runbook, re.M | re.S)
catalog = set(re.findall(r"^\| `(inferd_[a-z0-9_]+)` \|", open("../../docs/metrics.md").read(), re.M))
for expr in runbook_exprs:
    for metric in re.findall(r"(?<![\w:])(inferd_[a-z0-9_]+)", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        if metric not in catalog and base not in catalog:
            failures.append(f"docs/runbook.md: {metric} is not a metric of docs/metrics.md: {expr.strip()[:80]}")
    for recorded in re.findall(r"(?<![\w:])([a-z_]+:[a-z0-9_:]+)", expr):
        if recorded not in records:
            failures.append(f"docs/runbook.md: {recorded} is not recorded by rules.yml")
import subprocess, tempfile
with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as tmp:
    yaml.safe_dump({"groups": [{"name": "runbook", "rules": [
        {"record": f"runbook:expr_{i}", "expr": e} for i, e in enumerate(runbook_exprs)]}]}, tmp)
check = subprocess.run(["promtool", "check", "rules", tmp.name], capture_output=True, text=True)
if check.returncode != 0:
    failures.append(f"docs/runbook.md: PromQL that does not parse: {check.stdout}{check.stderr}")
import os
os.unlink(tmp.name)

fires, silent, tested_exprs = set(), set(), []
for test in tests["tests"]:
    for case in test.get("alert_rule_test", []):
        (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    tested_exprs += [case["expr"] for case in test.get("promql_expr_test", [])]
for name in sorted(alerts):
    if name not in fires:
        failures.append(f"alert {name}: rules_test.yml never expects it to fire")
    if name not in silent:
        failures.append(f"alert {name}: rules_test.yml never expects it to stay silent")
for name in sorted(records):
    if not any(name in expr for expr in tested_exprs):
        failures.append(f"recording rule {name}: no promql_expr_test in rules_test.yml")

path = "../grafana/inferd-dashboard.json"
try:
    dash = json.load(open(path))
except ValueError as e:
    failures.append(f"{path}: not valid JSON: {e}")
    dash = {"templating": {"list": []}, "panels": []}
variables = {v["name"]: v for v in dash["templating"]["list"]}
if variables.get("datasource", {}).get("type") != "datasource":
    failures.append(f"{path}: no datasource variable")
for name in ("daemon", "model"):
    if variables.get(name, {}).get("type") != "query":
        failures.append(f"{path}: no {name} template variable")
ids = set()
def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))
for panel in walk(dash["panels"]):
    if panel["id"] in ids:
        failures.append(f"{path}: panel id {panel['id']} is used twice")
    ids.add(panel["id"])
    if panel["type"] == "row":
        continue
    where = f"{path}: panel {panel.get('title')!r}"
    if panel.get("datasource", {}).get("uid") != "${datasource}":
        failures.append(f"{where}: datasource is not ${{datasource}}")
    if not panel.get("targets"):
        failures.append(f"{where}: no queries")
    for t in panel.get("targets", []):
        if not t.get("expr") or t.get("datasource", {}).get("uid") != "${datasource}":
            failures.append(f"{where} {t.get('refId')}: no expr, or a datasource other than ${{datasource}}")

# A Prometheus with --enable-feature=native-histograms stores the exporter's duration histograms
# as native histograms only (no _bucket, _sum or _count series), one without it as classic series
# only: an expression that reads just one of them is empty on the other kind of server.
DURATION = ("inferd_request_duration_seconds", "inferd_queue_wait_seconds", "inferd_compute_seconds")
exprs = [(f"rules.yml {r.get('record') or r.get('alert')}", r["expr"])
         for g in rules["groups"] for r in g["rules"]]
exprs += [(f"{path}: panel {p.get('title')!r} {t.get('refId')}", t.get("expr", ""))
          for p in walk(dash["panels"]) for t in p.get("targets", [])]
both_ways = 0
for where, expr in exprs:
    for family in DURATION:
        def uses(name):
            return re.search(rf"(?<![A-Za-z0-9_:]){name}(?![A-Za-z0-9_:])", expr) is not None
        native, buckets = uses(family), uses(family + "_bucket")
        if buckets and not native:
            failures.append(f"{where}: reads {family}_bucket only, which a Prometheus with native histograms "
                            f"does not store: put `histogram_quantile(Q, sum by (...) (rate({family}[...]))) or` in front")
        if native and not buckets and "histogram_quantile" in expr:
            failures.append(f"{where}: reads {family} natively only: add `or` the same over {family}_bucket "
                            f"for a Prometheus without native histograms")
        for part, function in (("_count", "histogram_count"), ("_sum", "histogram_sum")):
            if uses(family + part) and not (native and function in expr):
                failures.append(f"{where}: reads {family}{part} only: `{function}(rate({family}[...])) or` it "
                                f"for a Prometheus with native histograms")
        both_ways += native and buckets

for f in failures:
    print(f"check-rules: FAIL: {f}", file=sys.stderr)
if failures:
    sys.exit(1)
print(f"check-rules: {len(alerts)} alerts with a runbook section; {len(runbook_exprs)} runbook queries parse; "
      f"{len(alerts)} alerts and {len(records)} recording rules tested; "
      f"dashboard: {len(ids)} panels, all on ${{datasource}}; {both_ways} duration-histogram queries read "
      f"native and classic histograms")
EOF

bash ../alertmanager/check.sh
