#!/usr/bin/env python3
"""The Prometheus half of tests/remote_write/run.sh (which starts and stops the processes).

Subcommands:
  wait URL [--timeout S]        wait until URL answers 200
  site-config --out F --site NAME --exporter ADDR --write-url URL [--agent] [--send-native-histograms]
                                write a site Prometheus config: scripts/prometheus/prometheus.yml
                                (its external labels, job, rule_files: rules.yml) with 1 s scrapes
                                and rule evaluations, the exporter at ADDR as its only target,
                                `site: NAME` added to the external labels, and the remote_write
                                block of scripts/prometheus/remote-write.yml pointed at URL (with
                                a 1 s batch_send_deadline). --agent: for a server in agent mode,
                                no rule_files. --send-native-histograms: send_native_histograms on
  check --store URL --ruler URL --site URL --agent URL --agent-unsent URL --exporter ADDR
        --daemon NAME --robot-type RT --requests N
                                wait until both global servers hold what the host served, then
                                assert it (below); prints one line per check and a summary

The topology run.sh starts: one host (inferd and its exporter), scraped by two site servers.
  * site "test-site" (classic histograms, as Prometheus starts by default) evaluates rules.yml
    itself and remote-writes to "store": a global Prometheus with the remote-write receiver and
    no rules of its own, which is what Thanos Receive or Mimir are to a site.
  * site "test-site-agent" (--enable-feature=agent,native-histograms, send_native_histograms:
    true) only scrapes and forwards, to "ruler": a global Prometheus with the receiver and native
    histograms on that loads the shipped rules.yml, as a global rule evaluator (Thanos Ruler,
    Mimir's ruler) would. The agent evaluates no rules: had it evaluated rules.yml as well, its
    ALERTS series and the ruler's own would be one series written twice, and the ruler (a
    Prometheus receiver) answers "out of order sample" and drops each whole batch holding one.
  * site "test-site-unsent", an agent like the one above but with remote-write.yml's
    send_native_histograms left commented out, remote-writes to store.

What `check` asserts:
  * on each global server, the host's request counter for robot type RT sums to exactly N, the
    requests inferctl got an answer to, under that site's label: every sample arrived;
  * on store, every recording rule of rules.yml returns series under site "test-site", with the
    host's instance and daemon and the monitor label of prometheus.yml: the site's recording
    rules reached the global server with their external labels. Rates and the p99 are above 0;
  * on store, `up` of the host is 1, and no series other than what remote-write.yml keeps arrived
    (the site itself has scrape_* series, so the filter did drop something);
  * on store, from test-site-unsent, the request counter arrived but the duration histogram did
    not, neither native nor as classic buckets: what README's warning about
    send_native_histograms says;
  * on ruler, the duration histogram arrived as a native histogram (no _bucket series) whose
    count is the exporter's; and rules.yml, evaluated there over the remote-written series,
    answers with the host's instance and daemon: the request rate above 0 and a finite p99 from
    the native half of the quantile rule. Every rule ruler loaded is healthy;
  * each site's own /metrics: remote-write sent samples (and, from the agent, native histograms),
    failed none, and its newest sample sent is at most MAX_LAG_S behind its newest scraped;
  * the full site's /federate, with README's match[] for the recording rules, answers them with
    the site label (the federation alternative README offers).
Only the Python standard library and PyYAML (run.sh installs it if missing).
"""

import argparse
import json
import math
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
from prometheus_api import PrometheusAPI, QueryError, http_get, wait  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = REPO / "scripts/prometheus/prometheus.yml"
RULES = REPO / "scripts/prometheus/rules.yml"
REMOTE_WRITE_YML = REPO / "scripts/prometheus/remote-write.yml"
# README's federation example selects the recording rules by this name pattern.
FEDERATE_MATCH = '{__name__=~".+:inferd_.+"}'
DURATION = "inferd_request_duration_seconds"
SETTLE_TIMEOUT_S = 45.0
# A few batch_send_deadlines (1 s here); a queue that falls behind grows without bound.
MAX_LAG_S = 5.0


class Prometheus(PrometheusAPI):
    def __init__(self, name, base):
        super().__init__(base, name)

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def scalar(self, expr):
        """The value of a one-element vector, or None when the query returns nothing."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) != 1:
            raise QueryError(f"{self.name}: {expr} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def own_metrics(self):
        """The server's own /metrics page as {name: summed value}, and {name{labels}: value}."""
        _, body = http_get(f"{self.base}/metrics")
        sums = {}
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)", line)
            if m:
                sums[m.group(1)] = sums.get(m.group(1), 0.0) + float(m.group(3))
                if m.group(2):
                    sums[m.group(1) + m.group(2)] = float(m.group(3))
        return sums


# --- configs ------------------------------------------------------------------------------------

def site_config(args):
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    snippet = yaml.safe_load(REMOTE_WRITE_YML.read_text())
    if set(snippet) != {"remote_write"} or len(snippet["remote_write"]) != 1:
        raise SystemExit(f"remote_write: {REMOTE_WRITE_YML} should hold exactly one remote_write entry and nothing else")
    g = config["global"]
    g["scrape_interval"] = "1s"
    g["evaluation_interval"] = "1s"
    labels = g.setdefault("external_labels", {})
    if "monitor" not in labels:
        raise SystemExit(f"remote_write: {PROMETHEUS_YML} no longer sets the monitor external label")
    labels["site"] = args.site
    # The test's sites page nobody: firing alerts must not reach a real Alertmanager on :9093
    # (and agent mode refuses an alerting block).
    config.pop("alerting", None)
    if args.agent:
        # Agent mode refuses rule_files: rules run on the global side.
        config.pop("rule_files", None)
        config["global"].pop("evaluation_interval", None)
    else:
        config["rule_files"] = [str(RULES)]
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == "inferd"]
    if len(jobs) != 1:
        raise SystemExit(f"remote_write: {PROMETHEUS_YML} should have one job named inferd")
    job = jobs[0]
    job.pop("file_sd_configs", None)
    job["scrape_timeout"] = "900ms"
    job["static_configs"] = [{"targets": [args.exporter]}]
    config["scrape_configs"] = [job]
    entry = snippet["remote_write"][0]
    entry["url"] = args.write_url
    # The shipped 5 s would make the test wait for up to 5 s per hop; the rest is as shipped.
    entry.setdefault("queue_config", {})["batch_send_deadline"] = "1s"
    if args.send_native_histograms:
        entry["send_native_histograms"] = True
    config["remote_write"] = [entry]
    Path(args.out).write_text(yaml.safe_dump(config, sort_keys=False))
    return 0


# --- checks -------------------------------------------------------------------------------------

class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok    {name}")
        else:
            self.failed.append(name)
            print(f"  FAIL  {name}{': ' + detail if detail else ''}")


def exporter_value(exporter, name, daemon):
    """Summed value of a metric on the exporter's own /metrics page, for one daemon."""
    _, body = http_get(f"http://{exporter}/metrics")
    total, found = 0.0, False
    for line in body.decode().splitlines():
        m = re.match(rf'{re.escape(name)}\{{([^}}]*)\}}\s+(\S+)$', line)
        if m and f'daemon="{daemon}"' in m.group(1):
            total += float(m.group(2))
            found = True
    if not found:
        raise SystemExit(f"remote_write: the exporter serves no {name} for daemon {daemon}")
    return total


def recording_rules():
    rules = yaml.safe_load(RULES.read_text())
    names = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "record" in rule and rule["record"] not in names:
                names.append(rule["record"])
    if not names:
        raise SystemExit(f"remote_write: {RULES} has no recording rules")
    return names


def keep_regex():
    """The name;job filter of remote-write.yml, as Prometheus applies it (anchored)."""
    entry = yaml.safe_load(REMOTE_WRITE_YML.read_text())["remote_write"][0]
    keeps = [r for r in entry.get("write_relabel_configs", [])
             if r.get("action") == "keep" and r.get("source_labels") == ["__name__", "job"]]
    if len(keeps) != 1:
        raise SystemExit(f"remote_write: {REMOTE_WRITE_YML} should keep series by [__name__, job] in one rule")
    return re.compile(keeps[0]["regex"])


def settle(what, probe):
    """Polls probe() until it returns True; returns the seconds it took, or None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < SETTLE_TIMEOUT_S:
        try:
            if probe():
                return time.monotonic() - start
        except (RuntimeError, urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    print(f"remote_write: {what} did not happen within {SETTLE_TIMEOUT_S:.0f} s", file=sys.stderr)
    return None


def check(args):
    store = Prometheus("store", args.store)
    ruler = Prometheus("ruler", args.ruler)
    site = Prometheus("site test-site", args.site)
    agent = Prometheus("agent test-site-agent", args.agent)
    unsent = Prometheus("agent test-site-unsent", args.agent_unsent)
    rt = args.robot_type
    n = args.requests
    c = Checks()
    counter = 'sum(inferd_requests_total{{site="{site}",robot_type="{rt}"}})'
    duration_count = exporter_value(args.exporter, DURATION + "_count", args.daemon)
    rules = recording_rules()

    # --- wait until the last samples and rule evaluations are in on both global servers -------
    def arrived():
        return (store.scalar(counter.format(site="test-site", rt=rt)) == n
                and ruler.scalar(counter.format(site="test-site-agent", rt=rt)) == n
                and store.scalar(counter.format(site="test-site-unsent", rt=rt)) == n
                and all(store.query(f'{r}{{site="test-site"}}') for r in rules)
                and ruler.query(f'instance_daemon_model:inferd_request_duration_seconds:quantile_rate5m{{site="",quantile="0.99"}} > 0'))
    took = settle("every sample and rule on both global servers", arrived)
    print(f"remote_write: global servers settled {took:.1f} s after the load" if took is not None
          else "remote_write: checking what arrived so far")

    # --- store: raw series and the site's recording rules -----------------------------------
    for name, server in (("test-site", store), ("test-site-agent", ruler), ("test-site-unsent", store)):
        got = server.scalar(counter.format(site=name, rt=rt))
        c.check(f"{server.name}: sum(inferd_requests_total{{site=\"{name}\",robot_type=\"{rt}\"}}) == {n} requests sent",
                got == n, f"got {got}")

    up = store.query('up{site="test-site",job="inferd"}')
    c.check("store: up of the host is 1, with its instance",
            len(up) == 1 and up[0]["value"][1] == "1" and up[0]["metric"].get("instance") == args.exporter,
            json.dumps(up))

    for rule in rules:
        series = store.query(f'{rule}{{site="test-site"}}')
        bad = [s["metric"] for s in series
               if s["metric"].get("instance") != args.exporter or s["metric"].get("daemon") != args.daemon
               or s["metric"].get("monitor") != "inferd"]
        c.check(f"store: {rule}{{site=\"test-site\"}} has the host's instance, daemon and monitor labels",
                bool(series) and not bad, f"{len(series)} series, unlabelled: {bad[:2]}")
    rate = store.query(f'instance_daemon_model:inferd_requests:rate1m{{site="test-site"}} > 0')
    c.check("store: the site's request rate rule is above 0", bool(rate))
    p99 = store.query('instance_daemon_model:inferd_request_duration_seconds:quantile_rate5m{site="test-site",quantile="0.99"}')
    c.check("store: the site's p99 rule is finite and above 0",
            bool(p99) and all(0 < float(s["value"][1]) < math.inf for s in p99), json.dumps(p99))

    keep = keep_regex()
    names = store.query('count by (__name__, job) ({site="test-site"})')
    stray = sorted({f'{s["metric"]["__name__"]};{s["metric"].get("job", "")}' for s in names
                    if not keep.fullmatch(f'{s["metric"]["__name__"]};{s["metric"].get("job", "")}')})
    c.check("store: nothing arrived that remote-write.yml does not keep", not stray, f"{stray[:5]}")
    c.check("site test-site: has scrape_* series of its own, which the filter kept at the site",
            bool(site.query('scrape_samples_scraped{job="inferd"}')))

    # --- store, from the agent without send_native_histograms: no latency at all -----------
    lost = store.query(f'{{__name__=~"{DURATION}(_bucket|_count|_sum)?",site="test-site-unsent"}}')
    c.check(f"store: without send_native_histograms, no {DURATION} series arrived from the native agent",
            not lost, f"{len(lost)} series")
    m = unsent.own_metrics()
    appended = m.get('prometheus_agent_samples_appended_total{type="histogram"}', 0.0)
    hsent = m.get("prometheus_remote_storage_histograms_total")
    c.check(f"{unsent.name}: scraped native histograms ({appended:.0f}) and sent none",
            appended > 0 and hsent == 0, f"sent {hsent}")

    # --- ruler: native histograms and rules evaluated on the global side ---------------------
    native = ruler.query(f'{DURATION}{{site="test-site-agent",daemon="{args.daemon}"}}')
    c.check(f"ruler: {DURATION} arrived as native histograms",
            bool(native) and all("histogram" in s for s in native), json.dumps(native)[:300])
    c.check(f"ruler: no {DURATION}_bucket series (the agent scrapes native histograms only)",
            not ruler.query(f'{DURATION}_bucket{{site="test-site-agent"}}'))
    got = ruler.scalar(f'histogram_count(sum({DURATION}{{site="test-site-agent",daemon="{args.daemon}"}}))')
    c.check(f"ruler: histogram_count of {DURATION} == the exporter's {DURATION}_count ({duration_count:.0f})",
            got == duration_count, f"got {got}")
    classic = store.scalar(f'sum({DURATION}_count{{site="test-site",daemon="{args.daemon}"}})')
    c.check(f"store: {DURATION}_count == the exporter's ({duration_count:.0f})", classic == duration_count, f"got {classic}")

    own_rate = ruler.query('instance_daemon_model:inferd_requests:rate1m{site=""} > 0')
    c.check("ruler: rules.yml evaluated on the global side gives the host's request rate (instance, daemon)",
            bool(own_rate) and all(s["metric"].get("instance") == args.exporter and s["metric"].get("daemon") == args.daemon
                                   for s in own_rate), json.dumps(own_rate)[:300])
    own_p99 = ruler.query('instance_daemon_model:inferd_request_duration_seconds:quantile_rate5m{site="",quantile="0.99"}')
    c.check("ruler: its p99 rule, from the native half over remote-written histograms, is finite and above 0",
            bool(own_p99) and all(0 < float(s["value"][1]) < math.inf for s in own_p99), json.dumps(own_p99)[:300])
    unhealthy = [(r["name"], r.get("lastError")) for g in ruler.api("rules")["groups"] for r in g["rules"]
                 if r.get("health") != "ok"]
    loaded = sum(len(g["rules"]) for g in ruler.api("rules")["groups"])
    c.check(f"ruler: all {loaded} rules of rules.yml loaded and healthy", loaded > 0 and not unhealthy, f"{unhealthy[:3]}")

    # --- the sites' own view of their remote-write queue ---------------------------------------
    for server in (site, agent, unsent):
        m = server.own_metrics()
        sent = m.get("prometheus_remote_storage_samples_total", 0.0)
        failed = m.get("prometheus_remote_storage_samples_failed_total")
        c.check(f"{server.name}: remote-write sent samples ({sent:.0f}) and failed none",
                sent > 0 and failed == 0, f"failed {failed}")
        # README's lag: newest sample in the WAL minus newest sample sent.
        lag = (m.get("prometheus_remote_storage_highest_timestamp_in_seconds", math.inf)
               - m.get("prometheus_remote_storage_queue_highest_sent_timestamp_seconds", 0.0))
        c.check(f"{server.name}: remote-write keeps up (lag {lag:.0f} s <= {MAX_LAG_S:.0f} s)", 0 <= lag <= MAX_LAG_S)
    m = agent.own_metrics()
    hsent = m.get("prometheus_remote_storage_histograms_total", 0.0)
    hfailed = m.get("prometheus_remote_storage_histograms_failed_total")
    c.check(f"{agent.name}: remote-write sent native histograms ({hsent:.0f}) and failed none",
            hsent > 0 and hfailed == 0, f"failed {hfailed}")

    _, body = http_get(f"{site.base}/federate?" + urllib.parse.urlencode({"match[]": FEDERATE_MATCH}))
    lines = [l for l in body.decode().splitlines() if l and not l.startswith("#")]
    c.check(f"{site.name}: /federate?match[]={FEDERATE_MATCH} answers the recording rules with site=\"test-site\"",
            bool(lines) and all('site="test-site"' in l for l in lines), f"{len(lines)} lines")

    print(f"remote_write: {c.passed} passed, {len(c.failed)} failed")
    return 1 if c.failed or took is None else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("url")
    w.add_argument("--timeout", type=float, default=30.0)
    s = sub.add_parser("site-config")
    s.add_argument("--out", required=True)
    s.add_argument("--site", required=True)
    s.add_argument("--exporter", required=True)
    s.add_argument("--write-url", required=True)
    s.add_argument("--agent", action="store_true")
    s.add_argument("--send-native-histograms", action="store_true")
    k = sub.add_parser("check")
    for flag in ("--store", "--ruler", "--site", "--agent", "--agent-unsent", "--exporter", "--daemon", "--robot-type"):
        k.add_argument(flag, required=True)
    k.add_argument("--requests", type=int, required=True)
    args = p.parse_args()
    if args.cmd == "wait":
        return wait(args.url, args.timeout, "remote_write")
    if args.cmd == "site-config":
        return site_config(args)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
