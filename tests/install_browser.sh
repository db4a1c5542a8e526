#!/usr/bin/env bash
# The browser that tests/test_label_page.py drives: Debian's chromium and chromium-driver.
# Installed when missing and we are root (CI and fresh machines); otherwise a hint, and the
# browser test skips with its reason. Idempotent: does nothing when both are present.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing chromium and chromium-driver (Debian packages) for the labelling-page test" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium chromium-driver >/dev/null
else
    echo "note: /usr/bin/chromium or /usr/bin/chromedriver missing and not root: the browser test will be" \
         "skipped (install the Debian packages chromium and chromium-driver to run it)" >&2
fi
