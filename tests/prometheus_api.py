"""HTTP helpers shared by the test scripts that drive real Prometheus servers
(tests/promql, tests/remote_write, tests/alertmanager): a GET, a bounded wait for a server to
answer, and Prometheus' /api/v1 with its error reply turned into an exception."""

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def http_get(url, timeout=10.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read()


def wait(url, timeout, who):
    """0 once `url` answers 200 within `timeout` seconds, else 1 with the last error on stderr
    (prefixed with `who`, the script's name)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, _ = http_get(url, timeout=2.0)
            if status == 200:
                return 0
            last = f"HTTP {status}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.2)
    print(f"{who}: {url} did not answer within {timeout:.0f} s ({last})", file=sys.stderr)
    return 1


class QueryError(RuntimeError):
    pass


class PrometheusAPI:
    """Prometheus' HTTP API at `base`; `name`, when given, prefixes its errors."""

    def __init__(self, base, name=None):
        self.base = base.rstrip("/")
        self.name = name

    def api(self, path, **params):
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            _, body = http_get(url, timeout=30.0)
        except urllib.error.HTTPError as e:
            body = e.read()
        reply = json.loads(body)
        if reply.get("status") != "success":
            prefix = f"{self.name}: " if self.name else ""
            raise QueryError(f"{prefix}{reply.get('errorType', 'error')}: {reply.get('error', body[:200])}")
        return reply["data"]
