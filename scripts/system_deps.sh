#!/usr/bin/env bash
# System packages the tests need beyond Python: headless Chromium for the book's browser test.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  # Not root, or not Debian: the tests still run; the browser test is skipped unless a Chromium is found
  # ($SMOOTHGEN_CHROMIUM, or Playwright's own: `.venv/bin/playwright install chromium`).
  echo "system-deps: cannot install Chromium here (needs root and apt-get); the browser test will be skipped" \
       "unless SMOOTHGEN_CHROMIUM or 'playwright install chromium' provides one" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
