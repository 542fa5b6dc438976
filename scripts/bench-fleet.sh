#!/usr/bin/env bash
# The fleet benchmark: the project's rolling deploy (the release `deploy` binary) over N hosts
# reached through a real sshd on loopback, behind a real HAProxy and nginx, side by side with
# Ansible's canonical rolling playbook when `ansible-playbook` is found (on PATH, or
# ANSIBLE_PLAYBOOK=/path/to/ansible-playbook; `pip install ansible` in a venv). Prints Markdown
# tables for BENCHMARKS.md. Runs as root (sshd logs in as root with a key of its own).
#
#   bash scripts/bench-fleet.sh                                # N = 8,32,64,256, batch 8, 1 s and 100 ms, 3 reps
#   bash scripts/bench-fleet.sh --sizes 8,32 --reps 1 --broken 17 --verbose
#   bash scripts/bench-fleet.sh --help                         # every option
#
# Set CARGO_TARGET_DIR to build elsewhere; DEPLOY_BIN=path skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."

case " $* " in *" --help "*|*" -h "*) exec python3 scripts/bench_fleet.py --help ;; esac

bash scripts/install-servers.sh
if [ -z "${DEPLOY_BIN:-}" ]; then
  cargo build --release -p deploy-cli
  DEPLOY_BIN="${CARGO_TARGET_DIR:-target}/release/deploy"
fi
exec python3 scripts/bench_fleet.py --deploy-bin "$DEPLOY_BIN" "$@"
