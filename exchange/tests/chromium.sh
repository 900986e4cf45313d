#!/usr/bin/env bash
# Makes sure headless Chromium (Debian's `chromium`) is installed, for the browser check
# of `pingpost ledger report --html` (exchange/tests/finance.rs,
# `html_report_renders_in_chromium_with_the_json_figures`). Part of the
# README's test command and of .ci/run, before `cargo test`: the test fails (it does
# not skip) when Chromium is missing, unless PINGPOST_SKIP_BROWSER_CHECK=1 is set.
#
# Installs with apt-get as root (or through sudo), without recommended packages (about
# a minute on a fresh machine; nothing when it is already installed).
set -euo pipefail

CHROMIUM="${PINGPOST_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "${PINGPOST_SKIP_BROWSER_CHECK:-}" = "1" ]; then
    echo "chromium.sh: $CHROMIUM is missing and PINGPOST_SKIP_BROWSER_CHECK=1: the HTML report's browser check will be SKIPPED" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
echo "chromium.sh: installing chromium (apt-get install --no-install-recommends chromium)"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends chromium; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends chromium
fi
if [ ! -x "$CHROMIUM" ]; then
    echo "chromium.sh: chromium was installed but $CHROMIUM is not there (set PINGPOST_CHROMIUM)" >&2
    exit 1
fi
"$CHROMIUM" --version || true
