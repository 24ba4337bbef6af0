#!/usr/bin/env bash
# The test command (README, .ci/run): prepares this host (idempotent: installs and verifies
# podman, runc, CRIU 4.2, Open vSwitch, ...) and runs every test of the workspace, including the
# root integration tests in network namespaces. Run as root. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
testbed/setup-host.sh
cargo test --workspace "$@"
