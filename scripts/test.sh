#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit, integration on a real Kafka broker and a real
# redis-server started by the fixtures, chaos, eval, doctests).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
