#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the browser test (tests/test_browser.py),
# which drives it with Playwright's Python package: no browser download.
# Usage: source .ci/chromium.sh   (exports MLKIT_TEST_CHROMIUM)
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export MLKIT_TEST_CHROMIUM=/usr/bin/chromium
echo "$("$MLKIT_TEST_CHROMIUM" --version 2>/dev/null || echo chromium) (MLKIT_TEST_CHROMIUM is set)"
