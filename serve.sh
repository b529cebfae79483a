#!/usr/bin/env bash
# Set up OffGrid (engine built once per machine, starter model verified) and serve it on
# http://127.0.0.1:11611. Arguments go to `offgrid setup` (e.g. --cpu-only).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/bootstrap.sh
bootstrap ""
.venv/bin/offgrid setup "$@"
echo "== Serving on http://${OFFGRID_HOST:-127.0.0.1}:${OFFGRID_PORT:-11611} (Ctrl-C stops)"
exec .venv/bin/offgrid serve
