#!/usr/bin/env bash
# A real backward step of the daemon's wall clock (tests/clock_step.rs): installs libfaketime,
# then runs that test with REQUIRE_LIBFAKETIME set, so a missing library fails here
# instead of being skipped as in a plain `cargo test` on a machine without it.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=lib.sh.inc
source .ci/checks/lib.sh.inc

apt_install libfaketime
REQUIRE_LIBFAKETIME=1 cargo test --locked --quiet --test clock_step
