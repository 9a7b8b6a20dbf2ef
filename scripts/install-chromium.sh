#!/usr/bin/env bash
# Installs Debian's `chromium` for the report's browser test (tests/test_report_browser.py), when it
# is missing and this runs as root with apt. Quiet, and never fails: without Chromium that test
# skips and says why.
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: Chromium is not installed (needs root and apt to install it here); the report's browser test will skip" >&2
  exit 0
fi
if ! { timeout 900 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq chromium; } \
     >/dev/null 2>&1; then
  echo "note: could not install Chromium with apt-get; the report's browser test will skip" >&2
fi
exit 0
