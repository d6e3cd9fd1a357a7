#!/usr/bin/env python3
"""Routing and inhibition checks of alertmanager.yml (run by check.sh).

Routing goes through the real router: `amtool config routes test --verify.receivers=R labels...`
for each case of routes_test.yml and for every alert of rules.yml (alertname plus the rule's own
labels must reach the receiver routes_test.yml names for its severity). Before trusting
--verify.receivers, one deliberately wrong expectation must make amtool fail.

amtool cannot evaluate inhibition offline, so the inhibition rules are checked against the alerts
they are about: every alert name a matcher names exists in rules.yml; every label in a rule's
`equal:` is carried by every firing case of its target alerts in rules_test.yml (a label that an
alert lacks would be "" on it and match nothing); and every firing case of a source alert is
covered by a rule for each target it is meant to inhibit (so InferdDown without a daemon label
needs a rule of its own). The group_by labels must be labels some alert carries.
tests/alertmanager/run.sh shows a real inhibition in a real Alertmanager.
"""

import argparse
import re
import subprocess
import sys

import yaml

MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|([^"\s]*))\s*$')


class Matcher:
    """One Alertmanager matcher (`name=value`, `!=`, `=~`, `!~`); regexes are anchored, as there."""

    def __init__(self, text):
        m = MATCHER.match(text)
        if not m:
            raise ValueError(f"cannot parse matcher {text!r}")
        self.name, self.op = m.group(1), m.group(2)
        raw = m.group(3) if m.group(3) is not None else m.group(4)
        self.value = re.sub(r"\\(.)", r"\1", raw)
        self.text = text

    def matches(self, labels):
        value = labels.get(self.name, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = re.fullmatch(self.value, value) is not None
        return hit if self.op == "=~" else not hit

    def alertnames(self):
        """The alert names an alertname matcher spells out (=, or =~ a plain alternation)."""
        if self.name != "alertname" or self.op not in ("=", "=~"):
            return None
        if self.op == "=":
            return [self.value]
        return self.value.split("|") if re.fullmatch(r"[A-Za-z0-9_|]+", self.value) else None


def amtool_routes(config, labels, receivers):
    args = ["amtool", "config", "routes", "test", f"--config.file={config}",
            f"--verify.receivers={','.join(receivers)}"]
    args += [f'{k}="{v}"' for k, v in sorted(labels.items())]
    proc = subprocess.run(args, capture_output=True, text=True)
    return proc.returncode, proc.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--rules", required=True)
    ap.add_argument("--rules-tests", required=True)
    args = ap.parse_args()

    config = yaml.safe_load(open(args.config))
    cases = yaml.safe_load(open(args.cases))
    rules = yaml.safe_load(open(args.rules))
    rule_tests = yaml.safe_load(open(args.rules_tests))
    failures = []

    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    # The label sets each alert fires with, as rules_test.yml expects them.
    firing = {name: [] for name in alerts}
    for test in rule_tests["tests"]:
        for case in test.get("alert_rule_test", []):
            for exp in case.get("exp_alerts") or []:
                labels = {k: str(v) for k, v in exp.get("exp_labels", {}).items()}
                labels["alertname"] = case["alertname"]
                firing.setdefault(case["alertname"], []).append(labels)
    receivers = {r["name"] for r in config.get("receivers", [])}

    # --- routing, through amtool ---------------------------------------------------------------
    severity_receivers = cases["severity_receivers"]
    routed = []
    for case in cases["cases"]:
        routed.append((case["name"], {k: str(v) for k, v in case["labels"].items()}, case["receivers"]))
    for name, rule in sorted(alerts.items()):
        severity = rule.get("labels", {}).get("severity")
        if severity not in severity_receivers:
            failures.append(f"alert {name}: severity {severity!r} has no receiver in {args.cases}")
            continue
        labels = {k: str(v) for k, v in rule.get("labels", {}).items()}
        labels["alertname"] = name
        routed.append((f"rules.yml alert {name}", labels, [severity_receivers[severity]]))

    # A wrong expectation must fail, or a passing --verify.receivers proves nothing.
    name, labels, expected = routed[0]
    wrong = sorted(receivers - set(expected))[:1] or ["no-such-receiver"]
    rc, out = amtool_routes(args.config, labels, wrong)
    if rc == 0:
        failures.append(f"amtool accepted receivers {wrong} for {name!r} (it routes to {out!r}): "
                        "--verify.receivers does not fail on a mismatch, so no case below means anything")

    reached = set()
    for name, labels, expected in routed:
        for r in expected:
            if r not in receivers:
                failures.append(f"routing case {name!r}: receiver {r!r} is not in {args.config}")
        rc, out = amtool_routes(args.config, labels, expected)
        if rc != 0:
            failures.append(f"routing case {name!r}: {labels} reaches {out or 'nothing'}, expected {','.join(expected)}")
        reached.update(expected)
    for r in sorted(receivers - reached):
        failures.append(f"receiver {r!r}: no routing case reaches it")

    # --- grouping ------------------------------------------------------------------------------
    carried = {k for sets in firing.values() for labels in sets for k in labels}
    def group_bys(route):
        yield route.get("group_by", [])
        for child in route.get("routes", []):
            yield from group_bys(child)
    for group_by in group_bys(config["route"]):
        for label in group_by:
            if label != "..." and label not in carried:
                failures.append(f"group_by label {label!r}: no alert in rules_test.yml carries it")

    # --- inhibition ----------------------------------------------------------------------------
    parsed = []
    for i, rule in enumerate(config.get("inhibit_rules", [])):
        where = f"inhibit rule {i + 1}"
        for old in ("source_match", "source_match_re", "target_match", "target_match_re"):
            if old in rule:
                failures.append(f"{where}: {old} is deprecated; write source_matchers/target_matchers")
        try:
            source = [Matcher(m) for m in rule.get("source_matchers", [])]
            target = [Matcher(m) for m in rule.get("target_matchers", [])]
        except ValueError as e:
            failures.append(f"{where}: {e}")
            continue
        equal = rule.get("equal", [])
        names = {}
        for side, matchers in (("source", source), ("target", target)):
            spelled = [m.alertnames() for m in matchers if m.alertnames() is not None]
            if not spelled:
                failures.append(f"{where}: its {side} matchers name no alert (alertname=\"X\" or alertname=~\"X|Y\")")
                names[side] = []
                continue
            names[side] = spelled[0]
            for n in spelled[0]:
                if n not in alerts:
                    failures.append(f"{where}: {side} alert {n!r} is not in rules.yml")
        if not equal:
            failures.append(f"{where}: no equal: labels, so one alert would inhibit its targets everywhere")
        for n in names["target"]:
            for labels in firing.get(n, []):
                if not all(m.matches(labels) for m in target):
                    continue
                missing = [label for label in equal if not labels.get(label)]
                if missing:
                    failures.append(f"{where}: target {n} fires without {missing} (rules_test.yml: {labels}), "
                                    "so this rule can never inhibit it")
        parsed.append((where, source, target, equal, names))

    # Every way a source alert fires must be covered, for each target it is meant to inhibit.
    for where, _, _, _, names in parsed:
        for s in names["source"]:
            for labels in firing.get(s, []):
                for t in names["target"]:
                    covered = any(s in n2["source"] and t in n2["target"]
                                  and all(m.matches(labels) for m in src)
                                  and all(labels.get(label) for label in eq)
                                  for _, src, _, eq, n2 in parsed)
                    if not covered:
                        failures.append(f"{s} firing as {labels} inhibits no {t} (named in {where}): no rule "
                                        "matches it with all its equal: labels present")

    for f in sorted(set(failures)):
        print(f"alertmanager: FAIL: {f}", file=sys.stderr)
    if failures:
        return 1
    print(f"alertmanager: {len(routed)} routing cases reach their receivers "
          f"({len(cases['cases'])} from routes_test.yml, {len(alerts)} alerts of rules.yml); "
          f"{len(parsed)} inhibition rules name real alerts and labels they carry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
