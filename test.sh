#!/usr/bin/env bash
# Set up OffGrid with its test tools and run the whole suite: lint, format and strict types
# first (fail fast, before anything is built), then unit tests and end-to-end tests with the
# real engine and models. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/bootstrap.sh
bootstrap "[dev]"
echo "== Lint, format, types"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/offgrid setup --no-model
chromium="${OFFGRID_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then  # the dashboard's tests drive a real browser
    echo "== Installing Debian's chromium for the browser tests"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null; }; then
        echo "Could not install chromium: install it (apt-get install chromium) or set OFFGRID_CHROMIUM." >&2
        exit 1
    fi
fi
# The service tests boot a real systemd in a container, the LAN tests build network
# namespaces with iproute2 (both need root: elsewhere they skip)
for need in systemd-nspawn:systemd-container ip:iproute2; do
    if ! command -v "${need%%:*}" >/dev/null && [ "$(id -u)" -eq 0 ]; then
        echo "== Installing Debian's ${need#*:} for the tests that need it"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need#*:}" >/dev/null; }; then
            echo "Could not install ${need#*:} (apt-get install ${need#*:})." >&2
            exit 1
        fi
    fi
done
# In one process on 2 cores or fewer; in up to 4 (pytest-xdist, a file's tests together)
# with more cores. On 2 cores two processes took 430 s instead of 539 s on a quiet machine,
# but 29 minutes instead of 23 with two other CPU-bound jobs beside them, where the tests'
# own engines starved. OFFGRID_TEST_WORKERS=N chooses (0: one process).
cores="$(nproc)"
workers="${OFFGRID_TEST_WORKERS:-$(( cores <= 2 ? 0 : (cores / 2 > 4 ? 4 : cores / 2) ))}"
parallel=(-n "$workers" --dist loadfile)
[ "$workers" = 0 ] && parallel=()
echo "== Running the tests ($([ "$workers" = 0 ] && echo "one process" || echo "$workers processes"))"
set +e
.venv/bin/python -m pytest "${parallel[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "No test ran: that is a failure." >&2
    exit 1
fi
exit "$rc"
