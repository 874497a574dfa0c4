#!/usr/bin/env bash
# Install Debian's Chromium for the dashboard's browser tests (Playwright drives it through
# its executable path; `playwright install` is not used: it downloads its own browser builds).
# Idempotent; run as root (CI) or with sudo available.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  SUDO=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium
/usr/bin/chromium --version
