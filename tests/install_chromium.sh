#!/usr/bin/env bash
# Headless Chromium + ChromeDriver for tests/test_leaderboard_browser.py, from Debian's packages.
# Does nothing where both are already installed; where apt-get is missing or fails it warns and
# exits 0 (the browser test is then skipped with its reason).
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: no apt-get: install chromium and chromedriver yourself, or the browser test is skipped" >&2
  exit 0
fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
  chromium chromium-driver \
  || echo "warning: could not install chromium; the browser test will be skipped" >&2
exit 0
