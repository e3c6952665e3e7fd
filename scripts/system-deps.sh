#!/usr/bin/env bash
# Install the Debian packages the test suite runs for real, only those that are missing:
# libmagic, Redis, PostgreSQL, nginx (edge-cache tests) and Chromium (admin page browser test,
# driven by the PyPI playwright package; never `playwright install`).
set -euo pipefail
need=()
[ -e /usr/lib/x86_64-linux-gnu/libmagic.so.1 ] || ls /usr/lib/*/libmagic.so.1 >/dev/null 2>&1 || need+=(libmagic1)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing system packages: ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
