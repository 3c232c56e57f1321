#!/usr/bin/env bash
# `make bench` drives the HTTP contenders with wrk: install it where it is missing and we may
# (root with apt-get), else say what to do.
set -euo pipefail
command -v wrk >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing wrk (apt-get) for the HTTP benchmarks" >&2
  apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }
  exit 0
fi
echo "make bench needs wrk for the HTTP rows: install it (apt-get install wrk, brew install wrk)" >&2
exit 1
