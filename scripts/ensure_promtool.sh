#!/usr/bin/env bash
# tests/unit/test_deploy.py checks deploy/alerts.yml with promtool: install it where it is
# missing and we may (root with apt-get; Debian's `prometheus` package ships it), else say what
# to do.
set -euo pipefail
command -v promtool >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing promtool (apt-get install prometheus) to check deploy/alerts.yml" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || {
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
  command -v promtool >/dev/null && exit 0
fi
echo "tests/unit/test_deploy.py needs promtool: install it (apt-get install prometheus," \
     "brew install prometheus, or promtool from https://prometheus.io/download/)" >&2
exit 1
