#!/usr/bin/env bash
# tests/e2e/test_dashboard.py drives Debian's chromium with chromedriver: install them where
# they are missing and we may (root with apt-get), else say what to do.
set -euo pipefail
BROWSER=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver
[ -x "$BROWSER" ] && [ -x "$DRIVER" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium and chromium-driver (apt-get) for the dashboard's browser test" >&2
  export DEBIAN_FRONTEND=noninteractive
  packages=(chromium chromium-driver)
  # The package lists may be stale or absent: update them only when the install fails.
  apt-get install -y -q "${packages[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${packages[@]}" >/dev/null; }
  [ -x "$BROWSER" ] && [ -x "$DRIVER" ] && exit 0
  echo "apt-get installed chromium but $BROWSER or $DRIVER is still missing" >&2
  exit 1
fi
echo "the dashboard's browser test needs $BROWSER and $DRIVER: as root, run" \
     "scripts/ensure_browser.sh (or apt-get install chromium chromium-driver)" >&2
exit 1
