#!/bin/sh
# Installs Debian's headless-capable chromium and its chromedriver for the browser tests (tests/test_demo.py).
# Idempotent and quiet: exits 0 at once when both are already there; needs root (or passwordless sudo) and apt.
set -eu
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install_chromium.sh: not root and no passwordless sudo; install chromium and chromium-driver by hand" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: no apt-get here; install chromium and its chromedriver by hand" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
install() { $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }
if ! install 2>/dev/null; then
    $SUDO apt-get update -qq >/dev/null
    install
fi
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]
