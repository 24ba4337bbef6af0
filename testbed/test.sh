#!/usr/bin/env bash
# testbed/test.sh - the README's test command (and .ci/run's): prepare this host with
# setup-host.sh, then run every unit and root integration test of the workspace.
# Root on Debian 12; the integration tests create namespaces, bridges and containers and
# remove them again (also after failures: see docs/testbed.md, "Teardown").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
testbed/setup-host.sh
# The root integration tests run only with this set (else they print SKIPPED and return), and
# then a missing prerequisite fails them: see docs/developing.md, "Tests".
export MOSE_ROOT_TESTS=1
exec cargo test --workspace --no-fail-fast "$@"
