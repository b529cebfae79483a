#!/usr/bin/env bash
# Set up OffGrid with its test tools and run the whole suite: lint, types, unit tests, and
# end-to-end tests with the real engine and models. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/bootstrap.sh
bootstrap "[dev]"
.venv/bin/offgrid setup --no-model
echo "== Running the tests"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "No test ran: that is a failure." >&2
    exit 1
fi
exit "$rc"
