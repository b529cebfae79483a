# Sourced by install.sh and uninstall.sh: how they say what they do.
# shellcheck shell=bash

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

step() { echo "== $*"; }

# Every command that changes the system goes through run: printed, and skipped in a dry run
# (DRY_RUN=1, set by the script that sources this).
run() {
    printf '   $'
    printf ' %q' "$@"
    printf '\n'
    [ "$DRY_RUN" -eq 1 ] || "$@"
}
