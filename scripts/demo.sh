#!/usr/bin/env bash
# Set everything up, then run the live demo (Kafka + Redis + worker + generated traffic).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/reco demo "$@"
