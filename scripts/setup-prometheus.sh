#!/usr/bin/env bash
# Installs Debian's `prometheus` package (the server and promtool) when either is missing, and
# `prometheus-alertmanager` (the server and amtool) when either of those is missing.
# Idempotent and non-interactive; never leaves a Prometheus or Alertmanager server running.
set -euo pipefail

packages=()
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  packages+=(prometheus)
fi
if ! command -v amtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then
  packages+=(prometheus-alertmanager)
fi
if [[ ${#packages[@]} -eq 0 ]]; then
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  sudo="sudo"
fi

# Installing a service package starts it through invoke-rc.d; a policy-rc.d that answers 101
# forbids that, so nothing is left listening on :9090 or :9093. Only ours is removed afterwards.
policy=/usr/sbin/policy-rc.d
ours=""
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  ours=1
fi
cleanup() { if [[ -n $ours ]]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT

# Wait for another apt (unattended-upgrades, a parallel setup) rather than fail at once.
apt_wait=(-o DPkg::Lock::Timeout=600)
$sudo apt-get "${apt_wait[@]}" update -qq
$sudo apt-get "${apt_wait[@]}" install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

# Belt and braces: on hosts with systemd the units may still have been enabled and started.
# (Without systemd running, as in containers, systemctl answers neither and nothing was started.)
for unit in "${packages[@]}"; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$unit" 2>/dev/null; then
    $sudo systemctl stop "$unit" || true
  fi
  if command -v systemctl >/dev/null && systemctl is-enabled --quiet "$unit" 2>/dev/null; then
    $sudo systemctl disable "$unit" >/dev/null 2>&1 || true
  fi
done

command -v promtool >/dev/null && command -v prometheus >/dev/null
command -v amtool >/dev/null && command -v prometheus-alertmanager >/dev/null
echo "prometheus: $(prometheus --version 2>&1 | head -1)"
echo "alertmanager: $(prometheus-alertmanager --version 2>&1 | head -1)"
