#!/usr/bin/env bash
# `lossproof bench compare` (docs/compare.md): Debian's VictoriaMetrics single-node server
# (/usr/bin/victoria-metrics, the comparison target) and wrk (the HTTP load generator). The bench
# starts its own VictoriaMetrics on a temp dir; the package's service is kept from starting.
# Idempotent: does nothing when both are installed.
set -euo pipefail
need=()
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d keeps the victoria-metrics package from starting its own daemon
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  trap 'if [ "$made_policy" = 1 ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi' EXIT
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
dpkg-query -W victoria-metrics wrk
