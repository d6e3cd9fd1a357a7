"""The exporter's protobuf exposition, decoded by a second implementation: the official protobuf
runtime, with Prometheus' own metrics.proto (vendored at exporter/proto, compiled here at test
time with grpcio-tools' bundled protoc), against the text page parsed by the official Prometheus
Python client. A real inferd answers requests of two outcomes; the real exporter reads its
segment and serves both formats.

Every counter and gauge, and every histogram's count, sum and cumulative classic buckets, must
be the same in both; the duration histograms must also carry the native histogram (schema 3,
zero threshold 2^-20) whose buckets add up to the count and fold into the classic ones.
"""

import importlib.util
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferd_client import InferdClient, InferdError, zeros_observation

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "exporter/proto"
PROTO = PROTO_DIR / "io/prometheus/client/metrics.proto"
PROTOBUF_ACCEPT = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
PROTOBUF_CONTENT_TYPE = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
PATIENCE_SECONDS = 20

# The histograms the segment keeps in schema-3 buckets (docs/shm-layout.md).
DURATION_HISTOGRAMS = {"inferd_request_duration_seconds", "inferd_queue_wait_seconds", "inferd_compute_seconds"}
# Gauges that measure the scrape itself, its connections or the time since something: they move
# from one page to the next either way, so the protobuf page cannot equal a text page fetched a
# moment apart. Counters that move (the exporter's CPU time, its closed connections) need no
# list: the protobuf page, fetched between two text pages, must lie between them.
VOLATILE = {
    "inferd_heartbeat_age_seconds",
    "inferd_gpu_sample_age_seconds",
    "inferd_scrape_collector_duration_seconds",
    "inferd_exporter_scrape_duration_seconds",
    "inferd_exporter_http_connections",
    "inferd_process_resident_memory_bytes",
    # The exporter's own memory and descriptors move with the scrapes themselves.
    "inferd_exporter_process_resident_memory_bytes",
    "inferd_exporter_process_open_fds",
}

OK_REQUESTS = 40
INVALID_REQUESTS = 3


@pytest.fixture(scope="module")
def metrics_pb2(tmp_path_factory):
    """Prometheus' metrics.proto compiled with the real protoc into a module of the real
    protobuf runtime. Loaded by file path: its package `io.prometheus.client` would otherwise
    shadow the standard library's `io`."""
    import grpc_tools

    out = tmp_path_factory.mktemp("metrics_pb2")
    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/timestamp.proto
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{well_known}",
         f"--python_out={out}", str(PROTO)],
        check=True,
    )
    path = out / "io/prometheus/client/metrics_pb2.py"
    spec = importlib.util.spec_from_file_location("inferd_test_metrics_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port():
    """A free TCP port on 127.0.0.1 (bound and released; the race is harmless here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, accept=None):
    """(Content-Type, body) of a GET."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.headers["Content-Type"], r.read()


@pytest.fixture
def exporter(start_inferd, tmp_path):
    """A real inferd that has answered OK_REQUESTS ok and INVALID_REQUESTS invalid_input, and the
    real exporter reading its segment; yields the exporter's /metrics URL."""
    d = start_inferd()
    with InferdClient(d.socket, robot_type="pytest") as client:
        obs = zeros_observation(client.metadata)
        for i in range(OK_REQUESTS):
            client.infer({k: np.full_like(v, 0.01 * i) for k, v in obs.items()})
        for _ in range(INVALID_REQUESTS):
            with pytest.raises(InferdError):
                client.infer(np.zeros(3, np.float32))
    binary = os.environ.get("EXPORTER_BIN", str(ROOT / "target/debug/exporter"))
    assert os.access(binary, os.X_OK), f"no exporter binary at {binary}: run 'cargo build -p exporter' first"
    url = f"http://127.0.0.1:{free_port()}/metrics"
    log = tmp_path / "exporter.log"
    with open(log, "wb") as f:
        process = subprocess.Popen(
            [binary, "--listen", url.split("/")[2], "--segment", d.segment],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
        )
    try:
        # Until the exporter serves every answer the client got (the page is read live).
        deadline = time.monotonic() + PATIENCE_SECONDS
        while True:
            try:
                families = parse_text(get(url)[1])
                counts = families["inferd_requests_total"]
                ok = sum(v for (_, labels), v in counts.items() if dict(labels).get("status") == "ok")
                invalid = sum(v for (_, labels), v in counts.items() if dict(labels).get("status") == "invalid_input")
                if (ok, invalid) == (OK_REQUESTS, INVALID_REQUESTS):
                    break
            except (OSError, KeyError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the exporter never served the requests:\n{log.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        process.kill()
        process.wait()


def labels_key(pairs):
    """A series' labels as a dict key, whatever order each format lists them in."""
    return frozenset(pairs)


def parse_text(body):
    """The text page as {family name: {(sample name, labels): value}}, bucket `le`s as floats;
    family names as in the protobuf (a counter's with its `_total`)."""
    families = {}
    for family in text_string_to_metric_families(body.decode()):
        name = family.name + "_total" if family.type == "counter" else family.name
        samples = families.setdefault(name, {})
        for s in family.samples:
            labels = dict(s.labels)
            if "le" in labels:
                labels["le"] = float(labels["le"])
            samples[(s.name, labels_key(labels.items()))] = s.value
        families[name + "#type"] = family.type
    return families


def read_varint(data, pos):
    """One base-128 varint at `pos`: the length before each delimited message (the framing;
    the messages themselves are decoded by the protobuf runtime)."""
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def parse_protobuf(pb2, body):
    """The length-delimited MetricFamily messages of `body`."""
    families, pos = [], 0
    while pos < len(body):
        n, pos = read_varint(body, pos)
        family = pb2.MetricFamily()
        family.ParseFromString(body[pos:pos + n])
        pos += n
        families.append(family)
    return families


def native_buckets(h):
    """The native histogram's positive buckets as {index: absolute count}."""
    counts, index, count, deltas = {}, 0, 0, iter(h.positive_delta)
    for i, span in enumerate(h.positive_span):
        index = span.offset if i == 0 else index + span.offset
        for _ in range(span.length):
            count += next(deltas)
            counts[index] = count
            index += 1
    assert next(deltas, None) is None, "more positive deltas than the spans hold"
    return counts


def protobuf_samples(pb2, family):
    """A MetricFamily's samples as the text format would name them: {(sample name, labels): value}."""
    out = {}
    for m in family.metric:
        labels = [(l.name, l.value) for l in m.label]
        if family.type == pb2.COUNTER:
            out[(family.name, labels_key(labels))] = m.counter.value
        elif family.type == pb2.GAUGE:
            out[(family.name, labels_key(labels))] = m.gauge.value
        elif family.type == pb2.HISTOGRAM:
            h = m.histogram
            out[(family.name + "_count", labels_key(labels))] = h.sample_count
            out[(family.name + "_sum", labels_key(labels))] = h.sample_sum
            for b in h.bucket:
                out[(family.name + "_bucket", labels_key(labels + [("le", b.upper_bound)]))] = b.cumulative_count
            # +Inf is optional in the protobuf format: it is the count.
            out.setdefault((family.name + "_bucket", labels_key(labels + [("le", math.inf)])), h.sample_count)
        else:
            raise AssertionError(f"{family.name}: unexpected type {family.type}")
    return out


def test_protobuf_page_equals_text_page(exporter, metrics_pb2):
    pb2 = metrics_pb2
    text_before = parse_text(get(exporter)[1])
    content_type, body = get(exporter, PROTOBUF_ACCEPT)
    text_after = parse_text(get(exporter)[1])
    assert content_type == PROTOBUF_CONTENT_TYPE
    families = parse_protobuf(pb2, body)
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "a family sent twice"
    # A family with no series (the GPU ones without NVML) is only HELP and TYPE on the text
    # page, and nothing at all in the protobuf one, as in Prometheus' own client.
    text_names = {n for n, samples in text_before.items() if not n.endswith("#type") and samples}
    assert set(names) == text_names

    type_names = {pb2.COUNTER: "counter", pb2.GAUGE: "gauge", pb2.HISTOGRAM: "histogram"}
    compared = 0
    for family in families:
        assert type_names.get(family.type) == text_before[family.name + "#type"], family.name
        got = protobuf_samples(pb2, family)
        before, after = text_before[family.name], text_after[family.name]
        assert set(got) == set(before), f"{family.name}: other series than the text page's"
        for key, value in got.items():
            where = f"{family.name} {sorted(key[1])}: protobuf {value}, text {before[key]} then {after.get(key)}"
            if family.name in VOLATILE:
                assert math.isfinite(value), where
                continue
            if family.type == pb2.COUNTER:
                assert before[key] <= value <= after[key], where
            else:
                assert before[key] == value == after[key], where
            compared += 1
    assert compared > 100, "too few series compared to mean anything"
    # The histograms carry the requests sent.
    requests = text_before["inferd_request_duration_seconds"]
    assert sum(v for (n, _), v in requests.items() if n.endswith("_count")) == OK_REQUESTS + INVALID_REQUESTS


def test_duration_histograms_carry_schema_3_native_buckets(exporter, metrics_pb2):
    pb2 = metrics_pb2
    families = {f.name: f for f in parse_protobuf(pb2, get(exporter, PROTOBUF_ACCEPT)[1])}
    assert DURATION_HISTOGRAMS <= set(families)
    observed = 0
    for name in sorted(DURATION_HISTOGRAMS):
        assert families[name].type == pb2.HISTOGRAM
        for m in families[name].metric:
            h = m.histogram
            where = f"{name} {[(l.name, l.value) for l in m.label]}"
            assert h.HasField("schema") and h.schema == 3, where
            assert h.zero_threshold == 2.0**-20, where
            assert not h.negative_span and not h.negative_delta, where
            assert len(h.positive_span) > 0, f"{where}: no span, not even the no-op one a native histogram needs"
            buckets = native_buckets(h)
            assert all(c >= 0 for c in buckets.values()), where
            assert sum(buckets.values()) + h.zero_count == h.sample_count, where
            # Each classic bucket is the zero bucket plus every native bucket at or below its
            # bound: native bucket k is (2^((k-1)/8), 2^(k/8)] s.
            for b in h.bucket:
                if math.isinf(b.upper_bound):
                    continue
                below = sum(c for k, c in buckets.items() if k / 8 <= math.log2(b.upper_bound) + 1e-9)
                assert h.zero_count + below == b.cumulative_count, f"{where} le={b.upper_bound}"
            observed += h.sample_count
    # Every request has an end-to-end duration; the ok ones a queue wait and a compute time too.
    assert observed >= OK_REQUESTS * 3 + INVALID_REQUESTS
