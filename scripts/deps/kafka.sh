#!/usr/bin/env bash
# Kafka tests: a JRE 17+ and Maven (the broker jars come from Maven Central), then the jars of
# org.apache.kafka:kafka_2.13 and their runtime dependencies in ~/.cache/lossproof/kafka, so no
# test downloads anything. Idempotent: fast when everything is there.
set -euo pipefail
cd "$(dirname "$0")/../.."

java_ok() {
  command -v java >/dev/null 2>&1 || return 1
  local v
  v=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [ -n "$v" ] && [ "${v%%.*}" -ge 17 ]
}

need=()
java_ok || need+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
java_ok || { echo "kafka.sh: need Java 17 or newer" >&2; exit 1; }

python3 -c 'import confluent_kafka' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check 'confluent-kafka>=2.3,<3'
python3 -c 'from lossproof.dev.kafka import fetch; fetch()'
