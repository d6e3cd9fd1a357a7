#!/usr/bin/env python3
"""The Python half of tests/alertmanager/run.sh (which starts and stops the servers).

Subcommands:
  wait URL [--timeout S]      wait until URL answers 200
  webhook --port-file F --log F
                              serve HTTP on a free loopback port (written to F) and append every
                              POST (an Alertmanager webhook notification) to the log as a JSON line
  configs --prometheus-out F --targets F --exporter A --alertmanager-out F --alertmanager A
          --webhook URL       derive the test's configs from the shipped ones:
                              scripts/prometheus/prometheus.yml with 1 s scrapes and rule
                              evaluations, the exporter at A as its only target, the shipped
                              rules.yml, and its `alerting:` block pointed at the Alertmanager at A;
                              scripts/alertmanager/alertmanager.yml with the same routes and
                              inhibition rules, group_wait and group_interval of 1 s, and each
                              receiver a webhook to URL/<receiver name>
  scenario ...                the timed test (below)

The scenario starts inferd itself (and writes each one's pid to --pid-file for run.sh's cleanup):
  1. inferd serves; Prometheus sees inferd_up 1. The runbook's shmdump commands run against its
     segment and print it.
  2. Three crashes (SIGKILL) and restarts: InferdRestarting fires (changes(inferd_generation[15m])
     > 2), is active in Alertmanager and is notified to the `chat` receiver (severity warning).
  3. SIGKILL, no restart. InferdDown must appear in Alertmanager's /api/v2/alerts no earlier than
     its `for:` (read from rules.yml) after the kill and no later than `for:` + one evaluation
     interval + the allowance printed (inferd's 500 ms heartbeat timeout, one scrape interval, the
     evaluation that first sees inferd_up 0, and 2 s to send and poll). It must be notified to
     `pager` (severity critical) with its runbook_url; InferdRestarting, same instance and daemon,
     must turn `suppressed` with status.inhibitedBy naming InferdDown, and the runbook's
     `amtool alert query --inhibited` must list it.
  4. inferd restarts. InferdDown must leave /api/v2/alerts within one scrape interval + one
     evaluation interval + 2 s of the new inferd serving, `pager` must get the resolved
     notification, and InferdRestarting must be active (no longer inhibited) again.
Only the Python standard library and PyYAML.
"""

import argparse
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

# The HTTP helpers the Prometheus-driven test scripts share, in tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prometheus_api import http_get, wait  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "scripts/prometheus/rules.yml"
PROMETHEUS_YML = REPO / "scripts/prometheus/prometheus.yml"
ALERTMANAGER_YML = REPO / "scripts/alertmanager/alertmanager.yml"
RUNBOOK = REPO / "docs/runbook.md"

# The test's Prometheus scrapes and evaluates every second (configs below).
SCRAPE_INTERVAL_SECONDS = 1.0
EVALUATION_INTERVAL_SECONDS = 1.0
# inferd beats every 100 ms; the exporter calls it down at 500 ms (docs/shm-layout.md).
HEARTBEAT_TIMEOUT_SECONDS = 0.5
# Prometheus -> Alertmanager -> webhook, and this script's polling, on a busy 2-core machine.
SEND_ALLOWANCE_SECONDS = 2.0
POLL_SECONDS = 0.2


def say(msg):
    print(f"alertmanager: {msg}", flush=True)


class Failure(Exception):
    pass


def duration_seconds(text):
    """A Prometheus duration (`1m`, `90s`, `1h30m`, `0m`) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise Failure(f"cannot read duration {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


# --- webhook -----------------------------------------------------------------------------------

def webhook(port_file, log):
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            try:
                payload = json.loads(body)
            except ValueError:
                payload = {"unparsed": body.decode("utf-8", "replace")}
            line = json.dumps({"path": self.path, "received": time.time(), "body": payload})
            with lock, open(log, "a") as f:
                f.write(line + "\n")
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = f"{port_file}.tmp"
    Path(tmp).write_text(str(server.server_address[1]))
    os.replace(tmp, port_file)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    return 0


def notifications(log):
    try:
        lines = Path(log).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


# --- configs -----------------------------------------------------------------------------------

def make_configs(args):
    prom = yaml.safe_load(PROMETHEUS_YML.read_text())
    prom["global"]["scrape_interval"] = f"{SCRAPE_INTERVAL_SECONDS:g}s"
    prom["global"]["evaluation_interval"] = f"{EVALUATION_INTERVAL_SECONDS:g}s"
    prom["rule_files"] = [str(RULES)]
    jobs = [j for j in prom["scrape_configs"] if j["job_name"] == "inferd"]
    if len(jobs) != 1:
        raise Failure(f"{PROMETHEUS_YML} has no single job named inferd")
    jobs[0]["scrape_timeout"] = f"{SCRAPE_INTERVAL_SECONDS:g}s"
    jobs[0]["file_sd_configs"] = [{"files": [str(args.targets)], "refresh_interval": "5s"}]
    Path(args.targets).write_text(yaml.safe_dump([{"targets": [args.exporter]}]))
    # The shipped alerting block, with the test's Alertmanager in place of its targets.
    managers = prom.get("alerting", {}).get("alertmanagers", [])
    if len(managers) != 1 or len(managers[0].get("static_configs", [])) != 1:
        raise Failure(f"{PROMETHEUS_YML}: expected an alerting block with one alertmanagers entry of one static_configs")
    managers[0]["static_configs"][0]["targets"] = [args.alertmanager]
    Path(args.prometheus_out).write_text(yaml.safe_dump(prom, sort_keys=False))

    am = yaml.safe_load(ALERTMANAGER_YML.read_text())

    def fast(route):
        # Notify within a second instead of waiting to batch: the test times the whole path.
        route["group_wait"] = "1s"
        if "group_interval" in route or route is am["route"]:
            route["group_interval"] = "1s"
        for child in route.get("routes", []):
            fast(child)
    fast(am["route"])
    base = args.webhook.rstrip("/")
    am["receivers"] = [{"name": r["name"], "webhook_configs": [{"url": f"{base}/{r['name']}", "send_resolved": True}]}
                       for r in am["receivers"]]
    Path(args.alertmanager_out).write_text(yaml.safe_dump(am, sort_keys=False))
    return 0


# --- scenario ----------------------------------------------------------------------------------

class Inferd:
    """The inferd the scenario kills and restarts, on one socket and segment throughout."""

    def __init__(self, args):
        self.args = args
        self.proc = None
        self.log = open(args.inferd_log, "a")

    def start(self):
        socket = Path(self.args.socket)
        socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [self.args.inferd, "--socket", str(socket), "--segment-dir", self.args.segment_dir,
             "--segment-name", self.args.segment, "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        Path(self.args.pid_file).write_text(str(self.proc.pid))
        deadline = time.monotonic() + 30
        while not socket.exists():
            if self.proc.poll() is not None:
                raise Failure(f"inferd exited with status {self.proc.returncode} (see its log)")
            if time.monotonic() > deadline:
                raise Failure(f"inferd did not create {socket} within 30 s")
            time.sleep(0.02)
        return time.monotonic()

    def kill(self):
        """SIGKILL, as a crash: no drain, the segment keeps state `ready` and its last heartbeat."""
        self.proc.kill()
        self.proc.wait()
        return time.monotonic()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Servers:
    def __init__(self, prometheus, alertmanager):
        self.prometheus = prometheus.rstrip("/")
        self.alertmanager = alertmanager.rstrip("/")

    def query(self, expr):
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        reply = json.loads(http_get(url)[1])
        if reply.get("status") != "success":
            raise Failure(f"query {expr!r}: {reply}")
        return reply["data"]["result"]

    def alerts(self, alertname):
        """Alertmanager's alerts of that name: active, suppressed (inhibited or silenced), unprocessed."""
        url = f"{self.alertmanager}/api/v2/alerts?" + urllib.parse.urlencode({"filter": f'alertname="{alertname}"'})
        return json.loads(http_get(url)[1])


def until(what, timeout, check):
    """Poll check() until it returns something true; that and the seconds it took."""
    start = time.monotonic()
    while True:
        got = check()
        if got:
            return got, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise Failure(f"{what}: not within {timeout:.1f} s")
        time.sleep(POLL_SECONDS)


def runbook_shmdump_commands():
    """The distinct `shmdump ...` commands docs/runbook.md tells people to run."""
    return sorted(set(re.findall(r"`(shmdump [^`]*)`", RUNBOOK.read_text())))


def check_runbook_shmdump(args):
    commands = runbook_shmdump_commands()
    if not commands:
        raise Failure("docs/runbook.md names no shmdump command")
    for command in commands:
        argv = command.replace("DAEMON", args.segment).split()
        argv = [args.shmdump] + argv[1:] + ["--dir", args.segment_dir]
        watch = "--watch" in argv
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=2.5 if watch else 30)
            rc, stdout, stderr = out.returncode, out.stdout, out.stderr
        except subprocess.TimeoutExpired as e:
            # --watch redraws until interrupted: what it drew before the timeout is its answer.
            rc, stdout, stderr = 0, (e.stdout or b"").decode(), (e.stderr or b"").decode()
        if rc != 0 or "segment v" not in stdout or "state ready" not in stdout:
            raise Failure(f"runbook command `{command}` did not print the live segment: rc {rc}, {stderr.strip()[:200]}")
    say(f"runbook: {len(commands)} shmdump commands print the live segment ({', '.join(commands)})")


def run_scenario(args):
    rules = yaml.safe_load(RULES.read_text())
    alert_rules = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for_seconds = duration_seconds(alert_rules["InferdDown"]["for"])
    servers = Servers(args.prometheus, args.alertmanager)
    inferd = Inferd(args)
    daemon = f'daemon="{args.segment}"'
    log = args.webhook_log
    started = time.monotonic()
    try:
        # 1. serving
        inferd.start()
        _, took = until("Prometheus sees inferd_up 1", 60, lambda: servers.query(f"inferd_up{{{daemon}}} == 1"))
        say(f"inferd serving, inferd_up 1 in Prometheus after {took:.1f} s")
        check_runbook_shmdump(args)

        # 2. a crash loop
        for restart in range(1, 4):
            inferd.kill()
            inferd.start()
            until(f"restart {restart} seen by Prometheus", 30,
                  lambda: [s for s in servers.query(f"changes(inferd_generation{{{daemon}}}[15m])")
                           if float(s["value"][1]) >= restart])
        def restarting(state):
            return [a for a in servers.alerts("InferdRestarting")
                    if a["labels"].get("daemon") == args.segment and a["status"]["state"] == state]
        _, took = until("InferdRestarting active in Alertmanager after 3 restarts", 30, lambda: restarting("active"))
        say(f"3 restarts: InferdRestarting active in Alertmanager {took:.1f} s after the third")
        sent, took = until("InferdRestarting notified", 10, lambda: [
            n for n in notifications(log) if n["body"].get("status") == "firing"
            and any(a["labels"].get("alertname") == "InferdRestarting" for a in n["body"].get("alerts", []))])
        receivers = {n["body"]["receiver"] for n in sent}
        if receivers != {"chat"}:
            raise Failure(f"InferdRestarting (severity warning) was notified to {sorted(receivers)}, not to chat")

        # 3. dead: InferdDown within for: + one evaluation interval + the allowance
        allowance = HEARTBEAT_TIMEOUT_SECONDS + SCRAPE_INTERVAL_SECONDS + EVALUATION_INTERVAL_SECONDS + SEND_ALLOWANCE_SECONDS
        bound = for_seconds + EVALUATION_INTERVAL_SECONDS + allowance
        killed = inferd.kill()
        say(f"inferd killed (SIGKILL); InferdDown has for: {for_seconds:g} s; waiting up to {bound:.1f} s")
        def down():
            return [a for a in servers.alerts("InferdDown") if a["labels"].get("daemon") == args.segment]
        found, _ = until("InferdDown in /api/v2/alerts", bound + 10, down)
        fired = time.monotonic() - killed
        say(f"InferdDown in /api/v2/alerts {fired:.1f} s after SIGKILL (bound {bound:.1f} s = for: {for_seconds:g} s"
            f" + evaluation interval {EVALUATION_INTERVAL_SECONDS:g} s + allowance {allowance:.1f} s: heartbeat timeout"
            f" {HEARTBEAT_TIMEOUT_SECONDS:g} s, scrape interval {SCRAPE_INTERVAL_SECONDS:g} s, the evaluation that"
            f" first sees it {EVALUATION_INTERVAL_SECONDS:g} s, send and poll {SEND_ALLOWANCE_SECONDS:g} s)")
        if fired > bound:
            raise Failure(f"InferdDown took {fired:.1f} s, over the bound of {bound:.1f} s")
        if fired < for_seconds:
            raise Failure(f"InferdDown fired {fired:.1f} s after the kill, before its for: of {for_seconds:g} s")
        alert = found[0]
        if alert["status"]["state"] != "active" or alert["labels"].get("severity") != "critical":
            raise Failure(f"InferdDown is not an active critical alert: {alert['status']}, {alert['labels']}")
        expected_url = alert_rules["InferdDown"]["annotations"]["runbook_url"]
        if alert["annotations"].get("runbook_url") != expected_url:
            raise Failure(f"InferdDown's runbook_url is {alert['annotations'].get('runbook_url')!r}, not {expected_url!r}")

        paged, took = until("InferdDown notified", 10, lambda: [
            n for n in notifications(log) if n["body"].get("status") == "firing"
            and any(a["labels"].get("alertname") == "InferdDown" for a in n["body"].get("alerts", []))])
        receivers = {n["body"]["receiver"] for n in paged}
        if receivers != {"pager"}:
            raise Failure(f"InferdDown (severity critical) was notified to {sorted(receivers)}, not to pager")
        sent_url = paged[0]["body"]["alerts"][0]["annotations"].get("runbook_url")
        if sent_url != expected_url:
            raise Failure(f"the page carries runbook_url {sent_url!r}, not {expected_url!r}")
        say(f"InferdDown paged (receiver pager) {took:.1f} s after it appeared, with its runbook_url")

        held, took = until("InferdRestarting inhibited by InferdDown", 10, lambda: [
            a for a in restarting("suppressed") if alert["fingerprint"] in a["status"]["inhibitedBy"]])
        say(f"InferdRestarting suppressed, status.inhibitedBy = InferdDown's fingerprint {alert['fingerprint']}"
            f" ({took:.1f} s)")
        listed = subprocess.run([args.amtool, f"--alertmanager.url={args.alertmanager}", "alert", "query",
                                 "--inhibited", "alertname=InferdRestarting"], capture_output=True, text=True)
        if listed.returncode != 0 or "InferdRestarting" not in listed.stdout:
            raise Failure(f"the runbook's `amtool alert query --inhibited` does not list InferdRestarting: "
                          f"rc {listed.returncode}, {listed.stdout.strip()} {listed.stderr.strip()}")

        # 4. back: InferdDown resolves
        serving = inferd.start()
        resolve_bound = SCRAPE_INTERVAL_SECONDS + EVALUATION_INTERVAL_SECONDS + SEND_ALLOWANCE_SECONDS
        until("InferdDown gone from /api/v2/alerts", resolve_bound + 10, lambda: not down())
        resolved = time.monotonic() - serving
        say(f"inferd restarted: InferdDown gone from /api/v2/alerts {resolved:.1f} s after it served again"
            f" (bound {resolve_bound:.1f} s = scrape interval + evaluation interval + send and poll)")
        if resolved > resolve_bound:
            raise Failure(f"InferdDown took {resolved:.1f} s to resolve, over the bound of {resolve_bound:.1f} s")
        _, took = until("resolved notification to pager", 10, lambda: [
            n for n in notifications(log) if n["body"].get("status") == "resolved" and n["body"]["receiver"] == "pager"
            and any(a["labels"].get("alertname") == "InferdDown" for a in n["body"].get("alerts", []))])
        say(f"pager got InferdDown resolved {took:.1f} s later")
        _, took = until("InferdRestarting active again once InferdDown resolved", 10, lambda: restarting("active"))
        say(f"InferdRestarting no longer inhibited ({took:.1f} s)")
    finally:
        inferd.stop()
    say(f"passed in {time.monotonic() - started:.0f} s")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wait")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=30.0)
    p = sub.add_parser("webhook")
    p.add_argument("--port-file", required=True)
    p.add_argument("--log", required=True)
    p = sub.add_parser("configs")
    for flag in ("--prometheus-out", "--targets", "--exporter", "--alertmanager-out", "--alertmanager", "--webhook"):
        p.add_argument(flag, required=True)
    p = sub.add_parser("scenario")
    for flag in ("--prometheus", "--alertmanager", "--webhook-log", "--inferd", "--inferd-log", "--shmdump", "--amtool",
                 "--socket", "--segment-dir", "--segment", "--pid-file"):
        p.add_argument(flag, required=True)
    args = parser.parse_args()
    # run.sh stops us with SIGTERM: unwind, so that the inferd we started is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.command == "wait":
            return wait(args.url, args.timeout, "alertmanager")
        if args.command == "webhook":
            return webhook(args.port_file, args.log)
        if args.command == "configs":
            return make_configs(args)
        return run_scenario(args)
    except Failure as e:
        print(f"alertmanager: FAIL: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
