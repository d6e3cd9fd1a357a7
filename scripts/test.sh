#!/usr/bin/env bash
# The whole test run: README's test command, and what CI runs (.ci/run calls this).
# It installs what the tests need (promtool, Prometheus and Alertmanager, cargo-fuzz, cargo-deb and lintian, numpy and msgpack, the real
# openpi-client in its own venv (scripts/setup-openpi.sh), PyTorch for
# libtorch) only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { printf '\n==> %s\n' "$*"; }

step "tools the tests need"
bash scripts/setup-prometheus.sh
bash scripts/setup-fuzz.sh
bash scripts/setup-deb.sh

step "format, lints and API docs"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --locked --quiet

step "build (the end-to-end tests spawn these binaries)"
cargo build --workspace --all-targets --locked

step "cargo test"
cargo test --workspace --locked

step "the torch backend (installs PyTorch 2.11 once, into ~/.cache/inferd)"
bash scripts/test-torch.sh

step "benchmarks: a quick smoke pass of each (numbers come from scripts/bench.sh)"
cargo test --workspace --benches --locked

step "fuzz: every target of both fuzz workspaces, 60 s each"
FUZZ_SECONDS=60 bash scripts/fuzz.sh

step "soak, short (scripts/soak.sh alone runs 1,000 connections for 10 minutes)"
SOAK_CONNS=200 SOAK_SECONDS=30 SOAK_PROFILE=debug bash scripts/soak.sh

step "python client against the real daemon"
INFERD_BIN="$PWD/target/debug/inferd" bash tests/python/run.sh

step "systemd units: verify, exposure scores, install/uninstall into a staging root"
bash scripts/check-systemd.sh

step "one inferd per GPU: two inferd@ instances from their installed units, one exporter"
bash tests/systemd/instances.sh

step "the .deb: packaged from the debug build, checked (files, control data, maintainer scripts, lintian)"
bash scripts/build-deb.sh --profile dev --no-build --no-dbgsym
bash scripts/check-deb.sh

step "Prometheus rules, Alertmanager config and the Grafana dashboard: promtool and amtool checks, rule and routing tests, runbook links"
bash scripts/check-rules.sh

step "every PromQL expression of the rules and dashboard against a real Prometheus"
bash tests/promql/run.sh

step "alerting end to end: a killed inferd reaches Alertmanager and the pager within for: + one evaluation, and resolves"
bash tests/alertmanager/run.sh

step "remote_write scale-out: a site Prometheus and agents write a real host to global Prometheus servers"
bash tests/remote_write/run.sh

step "README's run command: the demo serves /metrics with inference counts"
DEMO_PROFILE=debug DEMO_PORT=19470 bash scripts/demo.sh --seconds 8 --check

step "all tests passed"
