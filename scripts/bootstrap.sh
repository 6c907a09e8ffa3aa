#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: system packages, the virtual environment,
# Kafka from Maven Central (cached in .cache/), redis-server. Fast when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "[bootstrap] installing system packages: ${need[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  # torch from PyPI brings its CUDA libraries: the finished .venv is ~6 GiB, and pip holds the downloaded
  # wheels in the temporary folder until it is done (~10 GiB at the peak). Say so up front rather than let
  # pip stop half-way with "No space left on device".
  need_kib=$((10 * 1024 * 1024))
  for dir in . "${TMPDIR:-/tmp}"; do
    free_kib=$(df -Pk "$dir" 2>/dev/null | awk 'NR == 2 {print $4}' || true)
    if [ -n "$free_kib" ] && [ "$free_kib" -lt "$need_kib" ]; then
      echo "[bootstrap] WARNING: only $((free_kib / 1024)) MiB free on the file system of $dir;" \
           "installing the Python dependencies needs about 10 GiB (torch with its CUDA libraries)" >&2
    fi
  done
  echo "[bootstrap] installing Python dependencies (torch from PyPI is large: first run takes minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
.venv/bin/python -m streams.localstack install
