#!/usr/bin/env bash
# The main job: install the real servers when missing, then run the demo deployment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-servers.sh
exec cargo run --release --example demo -- "$@"
