#!/usr/bin/env bash
# Install OffGrid LLM as a system service (systemd unit offgrid-llm), or upgrade it in place.
#
#   sudo ./install.sh [--cpu-only] [--prefix DIR] [--wheelhouse DIR] [--engine DIR]
#                     [--models DIR] [--dry-run]
#
# What it does, in order (each step prints a "== " line; --dry-run prints them and the
# commands, and changes nothing):
#   1. checks: root, the system's python3 >= 3.11 with venv, the source tree, the options;
#   2. the GPU: NVIDIA (CUDA build unless --cpu-only), AMD (CPU: ROCm is not supported by the
#      installer yet), none (CPU);
#   3. a static system user and group `offgrid` (in the render/video groups where they exist);
#   4. the service's folders: /var/lib/offgrid{,/models}, /var/cache/offgrid, /etc/offgrid;
#   5. the code in PREFIX (/opt/offgrid): a copy of the source and a venv made from the
#      system's python3 (a python under /root or /home would be hidden from the service by
#      ProtectHome), installed from the package index or, with --wheelhouse, from that folder
#      alone (no network);
#   6. /etc/offgrid/config.yaml (written once, never overwritten) and /etc/offgrid/env
#      (kept; the installer manages only its OFFGRID_LLAMA_SERVER line);
#   7. the engine (llama-server): copied from --engine DIR (a built engine folder) into
#      PREFIX/engine, else the one an earlier install put there, else built once by
#      `offgrid setup` as the offgrid user into /var/cache/offgrid (about 7 minutes on 2
#      cores);
#   8. with --models DIR: the GGUF files or bundle in DIR imported (verified) into
#      /var/lib/offgrid/models;
#   9. /usr/local/bin/offgrid: the CLI for every user, with the service's locations;
#  10. the unit deploy/offgrid-llm.service in /etc/systemd/system, enabled and (re)started,
#      then a wait until /health answers.
# Re-running it upgrades in place: models, registry, keys, config and env are kept.
set -euo pipefail
umask 022 # root's umask may be 077: the code and the venv must be readable by the service user

SERVICE=offgrid-llm
SVC_USER=offgrid
STATE_DIR=/var/lib/offgrid
MODELS_DIR=$STATE_DIR/models
CACHE_DIR=/var/cache/offgrid
CONF_DIR=/etc/offgrid
CONFIG=$CONF_DIR/config.yaml
ENV_FILE=$CONF_DIR/env
UNIT_DIR=/etc/systemd/system
WRAPPER=/usr/local/bin/offgrid
PYTHON=/usr/bin/python3
HEALTH_TIMEOUT=180 # seconds: a first start hashes every model not yet in the registry
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

PREFIX=/opt/offgrid
CPU_ONLY=0
DRY_RUN=0
WHEELHOUSE=""
ENGINE=""
MODELS=""

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# die, step and run (printed, skipped with --dry-run)
# shellcheck source=deploy/steps.sh
. "$(dirname "${BASH_SOURCE[0]}")/deploy/steps.sh"

# write_file PATH MODE OWNER:GROUP, content on stdin; written beside PATH, then renamed.
write_file() {
    local path=$1 mode=$2 owner=$3 content
    content=$(cat)
    echo "   write $path ($mode $owner)"
    [ "$DRY_RUN" -eq 1 ] && return 0
    printf '%s\n' "$content" >"$path.new"
    chmod "$mode" "$path.new"
    chown "$owner" "$path.new"
    mv -f "$path.new" "$path"
}

absolute() { # an option's folder, made absolute; it must exist
    [ -d "$1" ] || die "$2 $1: no such folder"
    (cd "$1" && pwd)
}

ARGS="$*" # for messages
while [ $# -gt 0 ]; do
    case $1 in
    --cpu-only) CPU_ONLY=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --prefix | --wheelhouse | --engine | --models)
        [ $# -ge 2 ] || die "$1 needs a folder"
        case $1 in
        --prefix) PREFIX=$2 ;;
        --wheelhouse) WHEELHOUSE=$(absolute "$2" "$1") ;;
        --engine) ENGINE=$(absolute "$2" "$1") ;;
        --models) MODELS=$(absolute "$2" "$1") ;;
        esac
        shift
        ;;
    --prefix=* | --wheelhouse=* | --engine=* | --models=*)
        set -- "${1%%=*}" "${1#*=}" "${@:2}"
        continue
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

STARTED=$SECONDS
VENV=$PREFIX/venv
SOURCE=$PREFIX/source
ENGINE_LINE="OFFGRID_LLAMA_SERVER=$PREFIX/engine/bin/llama-server"
[ "$DRY_RUN" -eq 1 ] && echo "Dry run: nothing is changed; the commands are printed."

# The unit's own Environment= lines: the service's locations, one source of truth for the
# installer, the wrapper and the health check.
UNIT_ENV=()
while read -r -a words; do
    UNIT_ENV+=("${words[@]}")
done < <(sed -n 's/^Environment=//p' "$HERE/deploy/$SERVICE.service" 2>/dev/null)

# The OFFGRID_* lines of /etc/offgrid/env (as systemd reads it: KEY=VALUE, quotes dropped).
env_file_vars() {
    [ -r "$ENV_FILE" ] || return 0
    local line value
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in
        OFFGRID_*=*)
            value=${line#*=}
            value=${value#[\"\']}
            value=${value%[\"\']}
            printf '%s\n' "${line%%=*}=$value"
            ;;
        esac
    done <"$ENV_FILE"
}

# A command as the service user, with the service's environment and nothing else (but the
# proxy and index settings an engine build needs to fetch the llama.cpp sources).
as_service() {
    local vars=(PATH=/usr/local/bin:/usr/bin:/bin "HOME=$STATE_DIR" LANG=C.UTF-8 "${UNIT_ENV[@]}")
    mapfile -t -O "${#vars[@]}" vars < <(env_file_vars)
    local name
    for name in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL; do
        if [ -n "${!name:-}" ]; then vars+=("$name=${!name}"); fi
    done
    run runuser -u "$SVC_USER" -- env -i "${vars[@]}" "$@"
}

systemd_running() { [ -d /run/systemd/system ]; }

# -- 1. checks -------------------------------------------------------------------------------
step "Checking the system"
if [ "$(id -u)" -ne 0 ]; then
    [ "$DRY_RUN" -eq 1 ] || die "run it as root: sudo $0 $ARGS"
    echo "   not root: fine for a dry run only"
fi
if [ ! -f "$HERE/pyproject.toml" ] || [ ! -d "$HERE/src/offgrid" ] || [ ! -f "$HERE/deploy/$SERVICE.service" ]; then
    die "run it from the OffGrid source tree (pyproject.toml, src/offgrid, deploy/$SERVICE.service beside it)"
fi
[ "${#UNIT_ENV[@]}" -gt 0 ] || die "deploy/$SERVICE.service sets no Environment="
case $PREFIX in
/*) ;;
*) die "--prefix must be an absolute path" ;;
esac
PREFIX=${PREFIX%/}
case $PREFIX/ in
/home/* | /root/* | /run/user/* | /tmp/* | /var/tmp/*)
    die "--prefix $PREFIX would be hidden from the service (ProtectHome, PrivateTmp): use /opt/offgrid" ;;
/ | /usr/ | /etc/ | /var/ | /opt/)
    die "--prefix $PREFIX is a system folder: name a folder of its own, e.g. /opt/offgrid" ;;
esac
# The system's python3, not one on the PATH: pyenv and similar live under /root or /home.
[ -x "$PYTHON" ] || die "$PYTHON not found: install it (apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "OffGrid needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1). On Debian 12 / Ubuntu 24.04 apt-get install python3."
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
    die "$PYTHON cannot make a venv: install the package python3-venv (apt-get install python3-venv; on some releases python3.X-venv)"
echo "   python: $PYTHON ($("$PYTHON" --version 2>&1))"
if [ -n "$WHEELHOUSE" ]; then
    ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1 || die "--wheelhouse $WHEELHOUSE holds no wheels"
    echo "   packages: from $WHEELHOUSE only (no network)"
else
    echo "   packages: from the package index (pip's own configuration applies)"
fi
if [ -n "$ENGINE" ]; then
    [ -x "$ENGINE/bin/llama-server" ] || die "--engine $ENGINE has no bin/llama-server: give a built engine folder (e.g. ~/.cache/offgrid/engine/cpu-…)"
fi
if ! systemd_running; then
    echo "   systemd is not running here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo '?')): the unit is installed and enabled, not started"
fi

# -- 2. GPU ----------------------------------------------------------------------------------
step "Looking for a GPU"
GPU=none
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    GPU=nvidia
    echo "   NVIDIA: $(nvidia-smi -L | head -n 1)"
elif [ -e /dev/kfd ]; then
    GPU=amd
    echo "   AMD (/dev/kfd)"
else
    echo "   none"
fi
SETUP_FLAGS=(--no-model --cpu-only) # for `offgrid setup`, when the engine is built here
if [ -n "$ENGINE" ]; then
    # A build from `offgrid setup` says what it was made for.
    made_for=$(sed -n 's/^  "backend": "\(.*\)",$/\1/p' "$ENGINE/ENGINE.json" 2>/dev/null || true)
    echo "   engine given: ${made_for:-a} build from $ENGINE"
    if [ "$GPU" = nvidia ] && [ "$CPU_ONLY" -eq 0 ] && [ "$made_for" = cpu ]; then
        echo "   note: a CPU build; the NVIDIA GPU stays unused (give a CUDA build to use it)"
    fi
elif [ "$CPU_ONLY" -eq 1 ]; then
    echo "   --cpu-only: a CPU engine"
elif [ "$GPU" = nvidia ]; then
    if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
        echo "   a CUDA engine (kernels for the GPUs in this machine)"
        SETUP_FLAGS=(--no-model --cuda)
    else
        echo "   no CUDA toolkit (nvcc): a CPU engine. For CUDA install the toolkit (apt-get install nvidia-cuda-toolkit) and run the installer again."
    fi
elif [ "$GPU" = amd ]; then
    echo "   ROCm builds are not supported by the installer yet: a CPU engine. The unit already"
    echo "   allows /dev/kfd and /dev/dri: a ROCm llama-server of your own works when named by"
    echo "   OFFGRID_LLAMA_SERVER in $ENV_FILE (then systemctl restart $SERVICE)."
else
    echo "   a CPU engine"
fi

# -- 3. user ---------------------------------------------------------------------------------
step "Service user $SVC_USER"
if id -u "$SVC_USER" >/dev/null 2>&1; then
    echo "   exists: $(id "$SVC_USER")"
else
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "OffGrid LLM service" "$SVC_USER"
fi
for group in render video; do # /dev/dri and /dev/kfd belong to these
    if getent group "$group" >/dev/null; then
        id -nG "$SVC_USER" 2>/dev/null | tr ' ' '\n' | grep -qx "$group" ||
            run usermod -a -G "$group" "$SVC_USER"
    fi
done

# -- 4. folders ------------------------------------------------------------------------------
step "Folders"
run install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$STATE_DIR" "$MODELS_DIR" "$CACHE_DIR"
run install -d -m 0755 -o root -g root "$CONF_DIR" "$PREFIX"

# -- 5. code and venv ------------------------------------------------------------------------
step "Code in $SOURCE"
run rm -rf "$SOURCE.new"
run mkdir -p "$SOURCE.new"
SOURCE_FILES=(src pyproject.toml README.md deploy install.sh uninstall.sh)
echo "   \$ tar -C $HERE -c ${SOURCE_FILES[*]} | tar -C $SOURCE.new -x   (no __pycache__)"
if [ "$DRY_RUN" -eq 0 ]; then
    tar -C "$HERE" --exclude=__pycache__ --exclude='*.pyc' -cf - "${SOURCE_FILES[@]}" |
        tar -C "$SOURCE.new" -xf -
fi
run rm -rf "$SOURCE"
run mv "$SOURCE.new" "$SOURCE"

step "Python environment $VENV"
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null)" = "$("$PYTHON" -c 'import sys; print(sys.version)')" ]; then
    echo "   exists (same python): upgrading it in place"
else
    run rm -rf "$VENV"
    run "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check --no-warn-script-location --quiet)
if [ -n "$WHEELHOUSE" ]; then
    # Only the wheelhouse: no index, and no pip configuration or PIP_* variables that could
    # name another source (find-links, extra indexes, constraints). It must also hold the
    # build backend (hatchling and its dependencies): the source is built into a wheel here.
    echo "   installing from $WHEELHOUSE (about 30 s)"
    (
        for var in $(compgen -e); do
            case $var in PIP_*) unset "$var" ;; esac
        done
        export PIP_CONFIG_FILE=/dev/null
        run "${PIP[@]}" --no-index --find-links "$WHEELHOUSE" "$SOURCE"
    )
else
    echo "   installing from the package index (about a minute)"
    run "${PIP[@]}" "$SOURCE"
fi
[ "$DRY_RUN" -eq 1 ] || "$VENV/bin/offgrid" --help >/dev/null || die "the installed offgrid does not run"

# -- 6. config and env -----------------------------------------------------------------------
step "Configuration in $CONF_DIR"
if [ -e "$CONFIG" ]; then
    echo "   $CONFIG exists: kept as it is"
else
    # Readable by every user: the offgrid CLI reads it too. Secrets go in $ENV_FILE.
    write_file "$CONFIG" 0644 root:root <<EOF
# OffGrid LLM configuration for the service (written once by install.sh, never overwritten).
# Precedence: defaults < this file < OFFGRID_* in $ENV_FILE < flags.
# See every setting and where its value comes from: offgrid config show
# After a change: sudo systemctl restart $SERVICE
#
# server:
#   host: 127.0.0.1        # 0.0.0.0 serves the LAN: create an API key first (offgrid keys create)
#   port: 11611
# inference:
#   context_size: 4096     # tokens per request
#   parallel: 4            # requests one engine runs at once
#   gpu_layers: -1         # -1 = as many as fit, 0 = CPU only
# scheduler:
#   keep_alive: 5m         # idle time before a model unloads
#   max_loaded_models: 3
EOF
fi
if [ -e "$ENV_FILE" ]; then
    echo "   $ENV_FILE exists: kept (only the OFFGRID_LLAMA_SERVER line is the installer's)"
else
    write_file "$ENV_FILE" 0640 "root:$SVC_USER" <<EOF
# Environment of the $SERVICE service (systemd EnvironmentFile: KEY=VALUE lines).
# Kept on upgrade. OFFGRID_* here override $CONFIG, e.g.:
# OFFGRID_HOST=0.0.0.0
# OFFGRID_PORT=11611
EOF
fi

# -- 7. engine -------------------------------------------------------------------------------
step "Engine (llama-server)"
ENGINE_MODE=build # given (--engine), kept (an earlier install's) or build
if [ -n "$ENGINE" ]; then
    ENGINE_MODE=given
    echo "   from $ENGINE"
    run rm -rf "$PREFIX/engine.new"
    run cp -a "$ENGINE" "$PREFIX/engine.new"
    run chown -R root:root "$PREFIX/engine.new"
    run chmod -R a+rX,go-w "$PREFIX/engine.new"
    run rm -rf "$PREFIX/engine"
    run mv "$PREFIX/engine.new" "$PREFIX/engine"
elif [ -x "$PREFIX/engine/bin/llama-server" ]; then
    ENGINE_MODE=kept
    echo "   keeping the engine an earlier install put in $PREFIX/engine"
else
    if ! command -v cmake >/dev/null || ! command -v c++ >/dev/null; then
        die "building the engine needs a C++ compiler and CMake: apt-get install build-essential cmake (or pass --engine DIR with a built engine)"
    fi
    echo "   building it once into $CACHE_DIR/engine as $SVC_USER: about 7 minutes on 2 cores"
    echo "   (a finished build is reused by later installs)"
    as_service "$VENV/bin/offgrid" setup "${SETUP_FLAGS[@]}"
fi

# The engine line: --engine names ours (replacing any other); a kept engine keeps ours
# unless the admin named another binary; a build in the cache needs no line (ours goes).
engine_lines=$(grep '^OFFGRID_LLAMA_SERVER=' "$ENV_FILE" 2>/dev/null || true)
case $ENGINE_MODE in
given) wanted=$ENGINE_LINE ;;
kept) wanted=${engine_lines:-$ENGINE_LINE} ;;
build) wanted=$(printf '%s\n' "$engine_lines" | grep -v -x -F "$ENGINE_LINE" || true) ;;
esac
if [ "$engine_lines" = "$wanted" ]; then
    [ -z "$wanted" ] || echo "   engine: $wanted"
elif [ "$DRY_RUN" -eq 1 ]; then
    echo "   set ${wanted:-no OFFGRID_LLAMA_SERVER} in $ENV_FILE"
else
    { grep -v '^OFFGRID_LLAMA_SERVER=' "$ENV_FILE" || true; [ -z "$wanted" ] || printf '%s\n' "$wanted"; } |
        write_file "$ENV_FILE" 0640 "root:$SVC_USER"
fi

# -- 8. models -------------------------------------------------------------------------------
if [ -n "$MODELS" ]; then
    step "Importing models from $MODELS into $MODELS_DIR"
    if [ "$DRY_RUN" -eq 1 ] || runuser -u "$SVC_USER" -- test -r "$MODELS" -a -x "$MODELS"; then
        as_service "$VENV/bin/offgrid" import "$MODELS"
    else # e.g. a folder under /root: import as root, then give everything back to the service
        echo "   $SVC_USER cannot read $MODELS: importing as root"
        vars=(HOME=/root "${UNIT_ENV[@]}")
        mapfile -t -O "${#vars[@]}" vars < <(env_file_vars)
        run env "${vars[@]}" "$VENV/bin/offgrid" import "$MODELS"
        run chown -R "$SVC_USER:$SVC_USER" "$STATE_DIR"
    fi
fi

# -- 9. the CLI for every user ---------------------------------------------------------------
step "Command $WRAPPER"
# The @NAMES@ are filled in below; nothing else in the text is expanded.
wrapper=$(
    cat <<'EOF'
#!/usr/bin/env bash
# `offgrid` for every user, talking to the @SERVICE@ service (written by OffGrid's install.sh).
# It uses the service's locations, so `offgrid list` shows @MODELS_DIR@, and the service's
# OFFGRID_HOST, OFFGRID_PORT… from @ENV_FILE@ where this user may read it. Run by root it
# runs as the service user @SVC_USER@, so that what it writes (models, registry, keys) stays
# the service's: a folder to import must then be readable by @SVC_USER@.
set -euo pipefail
@EXPORTS@
if [ -r @ENV_FILE@ ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in
        OFFGRID_*=*)
            value=${line#*=}
            value=${value#[\"\']}
            export "${line%%=*}=${value%[\"\']}"
            ;;
        esac
    done <@ENV_FILE@
fi
if [ "$(id -u)" -eq 0 ] && [ "${1:-}" != logs ]; then # the journal is root's to read
    exec runuser -u @SVC_USER@ -- @VENV@/bin/offgrid "$@"
fi
# The registry and keys are the service's alone (its UMask is 077): commands that read or
# change them need root. The others (ps, run, load, stop, info, config…) ask the server.
if [ ! -w @STATE_DIR@ ]; then
    case ${1:-} in
    list | show | verify | remove | import | export | keys | signing-key | download | download-hf | catalog | setup)
        echo "offgrid $1 works on the service's models and registry in @STATE_DIR@: run it as root (sudo offgrid $*)." >&2
        exit 1
        ;;
    esac
fi
exec @VENV@/bin/offgrid "$@"
EOF
)
wrapper=${wrapper//@EXPORTS@/$(printf 'export %q\n' "${UNIT_ENV[@]}")}
wrapper=${wrapper//@SERVICE@/$SERVICE}
wrapper=${wrapper//@MODELS_DIR@/$MODELS_DIR}
wrapper=${wrapper//@ENV_FILE@/$ENV_FILE}
wrapper=${wrapper//@SVC_USER@/$SVC_USER}
wrapper=${wrapper//@VENV@/$VENV}
wrapper=${wrapper//@STATE_DIR@/$STATE_DIR}
printf '%s\n' "$wrapper" | write_file "$WRAPPER" 0755 root:root

# -- 10. the unit ----------------------------------------------------------------------------
step "Service $SERVICE"
run install -m 0644 -o root -g root "$HERE/deploy/$SERVICE.service" "$UNIT_DIR/$SERVICE.service"
DROPIN=$UNIT_DIR/$SERVICE.service.d/10-prefix.conf
if [ "$PREFIX" != /opt/offgrid ]; then # the unit names /opt/offgrid; a drop-in moves it
    run install -d -m 0755 "$UNIT_DIR/$SERVICE.service.d"
    write_file "$DROPIN" 0644 root:root <<EOF
# Written by install.sh --prefix $PREFIX
[Service]
ExecStart=
ExecStart=$VENV/bin/offgrid serve
EOF
elif [ -e "$DROPIN" ]; then
    run rm -f "$DROPIN"
    run rmdir --ignore-fail-on-non-empty "$UNIT_DIR/$SERVICE.service.d"
fi
if [ "$DRY_RUN" -eq 0 ]; then
    echo "installed $(date -u +%Y-%m-%dT%H:%M:%SZ) from $HERE" >"$PREFIX/.offgrid-install"
fi

# The service's base URL, from its settings (config file, env file); a wildcard bind is
# reached on loopback.
service_url() {
    local vars=("${UNIT_ENV[@]}")
    mapfile -t -O "${#vars[@]}" vars < <(env_file_vars)
    env -i "${vars[@]}" "$VENV/bin/python" -c '
from offgrid.config import load_settings
s = load_settings()
host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(s.host, s.host)
print(f"http://[{host}]:{s.port}" if ":" in host else f"http://{host}:{s.port}")'
}

# Poll URL until it answers 200 or SECONDS pass; print the answer.
wait_for_health() {
    "$VENV/bin/python" - "$1" "$2" <<'PY'
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            print("   " + reply.read().decode())
            break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"{url} did not answer within {sys.argv[2]} s")
        time.sleep(0.5)
PY
}

url=http://127.0.0.1:11611
if systemd_running; then
    run systemctl daemon-reload
    run systemctl enable --quiet "$SERVICE"
    # restart = start when stopped, and an upgrade's new code starts here. Type=notify: it
    # returns once the server has said READY (the API answers) or has failed.
    if ! run systemctl restart "$SERVICE"; then
        journalctl -u "$SERVICE" -n 30 --no-pager >&2 || true
        die "$SERVICE did not start: see above, and systemctl status $SERVICE"
    fi
else
    run systemctl enable --quiet "$SERVICE" || true
fi
if [ "$DRY_RUN" -eq 1 ]; then
    step "Dry run done: nothing was changed"
elif systemd_running; then
    url=$(service_url)
    echo "   waiting for $url/health (at most $HEALTH_TIMEOUT s)"
    if ! wait_for_health "$url/health" "$HEALTH_TIMEOUT"; then
        journalctl -u "$SERVICE" -n 30 --no-pager >&2 || true
        die "$SERVICE is not answering: see above, and systemctl status $SERVICE"
    fi
    step "Done in $((SECONDS - STARTED)) s: $SERVICE is running"
else
    step "Installed in $((SECONDS - STARTED)) s; start it once systemd runs: systemctl start $SERVICE"
fi
cat <<EOF
   systemctl status $SERVICE        # state, main process and its engines
   journalctl -u $SERVICE -f        # the log
   curl $url/health
   offgrid list                         # the models in $MODELS_DIR
   Settings: $CONFIG and $ENV_FILE (then systemctl restart $SERVICE)
   Uninstall: sudo $SOURCE/uninstall.sh [--purge]
EOF
