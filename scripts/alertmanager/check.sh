#!/usr/bin/env bash
# Checks scripts/alertmanager/alertmanager.yml without a running Alertmanager:
#   amtool check-config   alertmanager.yml
#   amtool config routes test --verify.receivers, for each case of routes_test.yml and for every
#                         alert of scripts/prometheus/rules.yml (its severity's receiver)
# and that the grouping and inhibition rules use alert names and labels the alerts of rules.yml
# carry (as their firing cases in rules_test.yml show). Run by scripts/check-rules.sh;
# tests/alertmanager/run.sh runs the same file in a real Alertmanager.
set -euo pipefail
cd "$(dirname "$0")"
command -v amtool >/dev/null || { echo "alertmanager: amtool is missing: run scripts/setup-prometheus.sh" >&2; exit 1; }
if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "alertmanager: installing PyYAML"
  python3 -m pip install --quiet pyyaml
fi

amtool check-config alertmanager.yml
python3 check_routes.py --config alertmanager.yml --cases routes_test.yml \
  --rules ../prometheus/rules.yml --rules-tests ../prometheus/rules_test.yml
