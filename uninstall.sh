#!/usr/bin/env bash
# Remove the OffGrid LLM service that install.sh installed.
#
#   sudo ./uninstall.sh [--purge] [--prefix DIR] [--dry-run]
#
# Stops and disables the unit offgrid-llm, removes the unit file (and the installer's
# drop-in), the code and venv in PREFIX (default: where the installed unit runs it from,
# else /opt/offgrid) and /usr/local/bin/offgrid. It keeps the models, registry and keys in
# /var/lib/offgrid, the settings in /etc/offgrid and the user offgrid, so that installing
# again brings everything back. --purge removes those too (and /var/cache/offgrid,
# /var/log/offgrid). Running it twice is fine: what is gone is passed over.
set -euo pipefail

SERVICE=offgrid-llm
SVC_USER=offgrid
UNIT_DIR=/etc/systemd/system
UNIT=$UNIT_DIR/$SERVICE.service
WRAPPER=/usr/local/bin/offgrid
KEPT=(/var/lib/offgrid /etc/offgrid)
PURGED=(/var/lib/offgrid /var/cache/offgrid /var/log/offgrid /etc/offgrid)

PURGE=0
DRY_RUN=0
PREFIX=""

# die, step and run (printed, skipped with --dry-run)
# shellcheck source=deploy/steps.sh
. "$(dirname "${BASH_SOURCE[0]}")/deploy/steps.sh"

ARGS="$*" # for messages
while [ $# -gt 0 ]; do
    case $1 in
    --purge) PURGE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --prefix)
        [ $# -ge 2 ] || die "--prefix needs a folder"
        PREFIX=$2
        shift
        ;;
    --prefix=*) PREFIX=${1#*=} ;;
    -h | --help)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

if [ "$(id -u)" -ne 0 ] && [ "$DRY_RUN" -eq 0 ]; then
    die "run it as root: sudo $0 $ARGS"
fi
[ "$DRY_RUN" -eq 1 ] && echo "Dry run: nothing is changed; the commands are printed."

# Where the installed unit runs the server from: PREFIX/venv/bin/offgrid serve.
if [ -z "$PREFIX" ]; then
    exec_start=$(cat "$UNIT" "$UNIT.d"/*.conf 2>/dev/null |
        sed -n 's|^ExecStart=\(/.*\)/venv/bin/offgrid serve$|\1|p' | tail -n 1) || true
    PREFIX=${exec_start:-/opt/offgrid}
fi
PREFIX=${PREFIX%/}

step "Stopping the service $SERVICE"
if [ -d /run/systemd/system ] && systemctl cat "$SERVICE" >/dev/null 2>&1; then
    # Stopping the server stops its engines (they live in the unit's cgroup).
    run systemctl disable --now --quiet "$SERVICE"
else
    echo "   not installed or systemd not running: nothing to stop"
fi

step "Removing the unit"
removed_unit=0
for path in "$UNIT" "$UNIT.d"; do
    if [ -e "$path" ]; then
        run rm -rf "$path"
        removed_unit=1
    fi
done
WANTS=$UNIT_DIR/multi-user.target.wants/$SERVICE.service # left by `enable` without systemd
if [ -L "$WANTS" ]; then
    run rm -f "$WANTS"
    removed_unit=1
fi
if [ -d /run/systemd/system ] && [ "$removed_unit" -eq 1 ]; then
    run systemctl daemon-reload
    run systemctl reset-failed "$SERVICE" 2>/dev/null || true
fi
[ "$removed_unit" -eq 1 ] || echo "   already gone"

step "Removing the code in $PREFIX"
if [ -e "$PREFIX/.offgrid-install" ]; then
    run rm -rf "$PREFIX"
elif [ -e "$PREFIX" ]; then
    # Only a folder the installer made (it leaves .offgrid-install there) is removed whole.
    echo "   $PREFIX has no .offgrid-install: not made by install.sh, left alone"
else
    echo "   already gone"
fi

step "Removing the command $WRAPPER"
if [ -e "$WRAPPER" ] && grep -q "written by OffGrid's install.sh" "$WRAPPER"; then
    run rm -f "$WRAPPER"
elif [ -e "$WRAPPER" ]; then
    echo "   $WRAPPER was not written by install.sh: left alone"
else
    echo "   already gone"
fi

if [ "$PURGE" -eq 1 ]; then
    step "Purging models, keys, settings and the user $SVC_USER"
    for path in "${PURGED[@]}"; do
        if [ -e "$path" ]; then
            run rm -rf "$path"
        fi
    done
    if id -u "$SVC_USER" >/dev/null 2>&1; then
        run userdel "$SVC_USER"
    fi
    if getent group "$SVC_USER" >/dev/null; then
        run groupdel "$SVC_USER"
    fi
    step "Done: OffGrid LLM is gone"
else
    step "Done. Kept: ${KEPT[*]} (models, registry, keys, settings) and the user $SVC_USER"
    echo "   install again to get them back, or remove them too: sudo $0 --purge"
fi
