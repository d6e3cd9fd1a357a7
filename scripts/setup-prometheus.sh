#!/usr/bin/env bash
# Installs Debian's `prometheus` package (the server and promtool) when either is missing.
# Idempotent and non-interactive; never leaves a Prometheus server running.
set -euo pipefail

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  sudo="sudo"
fi

# Installing a service package starts it through invoke-rc.d; a policy-rc.d that answers 101
# forbids that, so nothing is left listening on :9090. Only ours is removed afterwards.
policy=/usr/sbin/policy-rc.d
ours=""
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  ours=1
fi
cleanup() { if [[ -n $ours ]]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT

$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# Belt and braces: on hosts with systemd the unit may still have been enabled and started.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  $sudo systemctl stop prometheus || true
fi
if command -v systemctl >/dev/null && systemctl is-enabled --quiet prometheus 2>/dev/null; then
  $sudo systemctl disable prometheus >/dev/null 2>&1 || true
fi

command -v promtool >/dev/null && command -v prometheus >/dev/null
echo "prometheus: $(prometheus --version 2>&1 | head -1)"
