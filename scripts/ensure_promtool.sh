#!/usr/bin/env bash
# tests/unit/test_deploy.py checks deploy/alerts.yml with promtool, and tests/e2e/test_prometheus.py
# runs the Prometheus server on deploy/: install them where they are missing and we may (root
# with apt-get; Debian's `prometheus` package ships both), else say what to do.
set -euo pipefail
have() { command -v promtool >/dev/null && command -v prometheus >/dev/null; }
have && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing promtool (apt-get install prometheus) to check deploy/alerts.yml" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || {
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
  have && exit 0
fi
echo "tests need promtool and prometheus: install them (apt-get install prometheus," \
     "brew install prometheus, or from https://prometheus.io/download/)" >&2
exit 1
