# Sourced by serve.sh and test.sh: a virtual environment in .venv with OffGrid installed.
# Usage: bootstrap "<pip extras>"   e.g.  bootstrap ""  or  bootstrap "[dev]"
bootstrap() {
    local py="${PYTHON:-python3}"
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "OffGrid needs Python >= 3.11 (found: $("$py" --version 2>&1)). Set PYTHON=..." >&2
        exit 1
    fi
    [ -x .venv/bin/python ] || "$py" -m venv .venv
    echo "== Installing OffGrid into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".$1" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
    .venv/bin/python -c "import offgrid" || { echo "Installing OffGrid failed" >&2; exit 1; }
}
