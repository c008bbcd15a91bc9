#!/usr/bin/env bash
# Make sure the browser tests have their browser (called by `make test`): Debian's chromium and
# its driver, /usr/bin/chromium and /usr/bin/chromedriver. Installs them with apt when missing;
# nothing else is downloaded (Selenium is pointed at these two). Safe to rerun.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v apt-get >/dev/null; then
    echo "warning: no apt-get here; install chromium and its driver yourself, or the browser tests skip" >&2
    exit 0
fi
echo "installing chromium and chromium-driver for the browser tests (apt)"
if ! { $SUDO apt-get update -q && \
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            chromium chromium-driver; }; then
    echo "warning: could not install chromium; the browser tests will skip (fail under CI=true)" >&2
fi
