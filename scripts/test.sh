#!/usr/bin/env bash
# Run every check CI runs: install the real servers when missing, then format, lints, docs and
# all tests of the workspace (the adapter tests start real servers on loopback themselves).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-servers.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --quiet
echo "== cargo test"
cargo test --workspace --all-features
