#!/usr/bin/env bash
# Real third-party clients for tests/protocols: Prometheus (remote write; also the reference server of
# the PromQL conformance test, tests/promql) and the InfluxDB 1.x CLI (`influx -import`), from Debian.
# Idempotent: does nothing when both are installed.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v influx >/dev/null 2>&1 || need+=(influxdb-client)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Keep the prometheus package from starting its own daemon: tests start their own.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  trap 'if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  apt-get update -qq
  # --no-install-recommends: prometheus recommends exporters the tests do not need
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
prometheus --version 2>&1 | head -1
influx -version 2>&1 | head -1
