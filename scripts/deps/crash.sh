#!/usr/bin/env bash
# The crash-consistency tests (docs/reliability.md): strace (fsync faults injected from outside the
# process), fuse3 (fusermount3, for the power-cut file system) and what pip needs to build pyfuse3
# from its source (libfuse3-dev, pkg-config, a C compiler). scripts/bootstrap runs this before its pip
# step for that reason. Idempotent: does nothing when everything is there.
set -euo pipefail
need=()
command -v strace >/dev/null 2>&1 || need+=(strace)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists fuse3 2>/dev/null || need+=(libfuse3-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || echo "crash.sh: no /dev/fuse here: the power-cut file system tests cannot mount" >&2
