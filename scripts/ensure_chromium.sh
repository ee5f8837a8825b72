#!/usr/bin/env bash
# Make Debian's chromium available for the browser tests (Playwright drives it; it never
# downloads a browser of its own). Installs it with apt when running as root; otherwise
# says what to do. Under CI=true a missing browser is an error.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -n "${CHROMIUM:-}" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian chromium for the browser tests..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
  exit 0
fi
echo "chromium not found: browser tests will be skipped (install Debian's 'chromium' package)." >&2
if [ "${CI:-}" = "true" ]; then
  exit 1
fi
