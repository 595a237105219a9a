#!/usr/bin/env bash
# The dashboard's test and run-time needs: Debian's chromium + chromium-driver (real-browser tests),
# promtool (from the prometheus package: deploy/alerts.yml checks), and the charting library uPlot,
# fetched from the npm registry at a pinned version and hash into the package (never committed).
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the prometheus package from starting its own service
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d.lossproof-dash
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    cp /usr/sbin/policy-rc.d.lossproof-dash /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  rm -f /usr/sbin/policy-rc.d.lossproof-dash
  apt-get install -y -qq --no-install-recommends "${need[@]}" fonts-dejavu-core >/dev/null
fi
python3 -m lossproof.query.uplot
chromium --version 2>/dev/null | head -1 || true
promtool --version 2>&1 | head -1
