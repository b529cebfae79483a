#!/usr/bin/env bash
# Install OffGrid LLM from this pack (made by `offgrid pack`) with no network at all.
#
#   sudo bash install.sh [--key KEY] [--verify-only] [--cpu-only] [--prefix DIR] [--dry-run]
#
# It checks the whole pack first, and changes nothing on this machine unless every check
# passes (each step prints a "== " line):
#   1. the seal is there: SHA256SUMS, SHA256SUMS.sig, signer.pub (a pack whose making was
#      interrupted has no SHA256SUMS.sig);
#   2. the signature: SHA256SUMS.sig is signer.pub's ed25519 signature of SHA256SUMS
#      (openssl 3). The signer's key is printed: compare it with `offgrid signing-key` on the node
#      that made the pack, or give it as --key KEY (or OFFGRID_PACK_KEY=KEY) to refuse any
#      other signer;
#   3. the list: SHA256SUMS names plain relative paths only, and every file in the pack is
#      named in it (nothing added) and is a plain file (no links);
#   4. the contents: sha256sum -c --strict of every file (nothing changed or missing);
#   5. this machine: its /usr/bin/python3 is one the wheelhouse serves, its glibc is as new
#      as the engine needs, and the engine runs here.
# Then source/install.sh runs with --wheelhouse (pip --no-index: these wheels alone),
# --engine (the engine built on the packing node: no compile) and --models (the bundle),
# and the options given (--cpu-only, --prefix, --dry-run: see source/install.sh --help).
# --verify-only stops after the checks (root is not needed for it).
set -euo pipefail
umask 022

PACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUMS=SHA256SUMS
SIG=SHA256SUMS.sig
SIGNER=signer.pub
PYTHON=/usr/bin/python3
# A path in SHA256SUMS: letters, digits and ._+@=- in each part, no part starting with a
# dot (so no "..", no hidden files, nothing to quote). offgrid/pack/parts.py: SAFE_NAME.
PART='[A-Za-z0-9_+@=-][A-Za-z0-9._+@=-]*'
LINE="^[0-9a-f]{64}  $PART(/$PART)*\$"

KEY=${OFFGRID_PACK_KEY:-}
VERIFY_ONLY=0
DRY_RUN=0
PASS=()
STAGE=""

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

step() { echo "== $*"; }

die() {
    echo "install.sh: $*" >&2
    exit 1
}

refuse() {
    echo "install.sh: REFUSED: $*" >&2
    echo "install.sh: nothing was installed or changed. Make the pack again (offgrid pack) or copy it again from a good copy." >&2
    exit 1
}

cleanup() { [ -z "$STAGE" ] || rm -rf "$STAGE"; }
trap cleanup EXIT

while [ $# -gt 0 ]; do
    case $1 in
    --key)
        [ $# -ge 2 ] || die "--key needs the signer's key (as \`offgrid signing-key\` prints it)"
        KEY=$2
        shift
        ;;
    --key=*) KEY=${1#*=} ;;
    --verify-only) VERIFY_ONLY=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        [ "$1" != --dry-run ] || DRY_RUN=1
        PASS+=("$1")
        ;;
    esac
    shift
done

if [ "$VERIFY_ONLY" -eq 0 ] && [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    die "run it as root: sudo bash $0 ${PASS[*]:-} (or --verify-only to check the pack only)"
fi
for tool in sha256sum openssl find sort comm base64; do
    command -v "$tool" >/dev/null || die "$tool is missing: it checks the pack (apt-get install coreutils openssl findutils)"
done
case $(openssl version) in
OpenSSL\ [3-9]*) ;;
*) die "$(openssl version) cannot check ed25519 signatures of files: this needs OpenSSL 3 or newer" ;;
esac
cd "$PACK"

# -- 1. the seal -----------------------------------------------------------------------------
step "Checking the pack in $PACK"
for name in "$SUMS" "$SIG" "$SIGNER" pack.json; do
    [ -f "$name" ] || refuse "$name is missing: the pack is incomplete (was its making interrupted?)"
done

# -- 2. the signature ------------------------------------------------------------------------
step "Signature"
openssl pkey -pubin -in "$SIGNER" -noout -text 2>/dev/null | grep -q '^ED25519 Public-Key' ||
    refuse "$SIGNER is not an ed25519 public key"
signer=$(openssl pkey -pubin -in "$SIGNER" -outform DER | tail -c 32 | base64 -w 0)
if ! openssl pkeyutl -verify -pubin -inkey "$SIGNER" -rawin -in "$SUMS" -sigfile "$SIG" >/dev/null 2>&1; then
    refuse "the signature does not match: $SIG is not $SIGNER's signature of $SUMS, which was changed after the pack was made"
fi
echo "   $SUMS is signed by the node key $signer"
if [ -n "$KEY" ]; then
    [ "$signer" = "$KEY" ] || refuse "the pack is signed by $signer, not by the key given ($KEY)"
    echo "   that is the key given: accepted"
else
    echo "   compare it with \`offgrid signing-key\` on the node that made the pack (--key KEY checks it)"
fi

# -- 3. the list -----------------------------------------------------------------------------
step "Every file listed, nothing added"
bad=$(grep -cvE "$LINE" "$SUMS" || true)
[ "$bad" -eq 0 ] || refuse "$SUMS has $bad line(s) that are not a sha256 and a plain relative path: $(grep -vE "$LINE" "$SUMS" | head -n 3)"
odd=$(find . -mindepth 1 ! -type d ! -type f -printf '%P\n' | head -n 5)
[ -z "$odd" ] || refuse "the pack holds entries that are not plain files (links?): $odd"
extra=$(comm -23 <(find . -mindepth 1 -type f -printf '%P\n' | LC_ALL=C sort) \
    <({ cut -c 67- "$SUMS"; printf '%s\n' "$SUMS" "$SIG" "$SIGNER"; } | LC_ALL=C sort))
[ -z "$extra" ] || refuse "files not listed in $SUMS were added to the pack: $(echo "$extra" | head -n 5 | tr '\n' ' ')"
echo "   $(wc -l <"$SUMS") files listed, no other file"

# -- 4. the contents -------------------------------------------------------------------------
step "Every file's sha256"
for part in source wheelhouse engine models ""; do
    if [ -n "$part" ]; then
        lines=$(grep -E "^.{66}$part/" "$SUMS" || true)
    else
        lines=$(grep -vE "^.{66}(source|wheelhouse|engine|models)/" "$SUMS" || true)
    fi
    [ -n "$lines" ] || continue
    if ! failed=$(printf '%s\n' "$lines" | sha256sum -c --strict --quiet - 2>&1); then
        refuse "these files differ from $SUMS (damaged or changed):
$(printf '%s\n' "$failed" | grep -v '^sha256sum: WARNING' | sed 's/^/   /')"
    fi
    echo "   ${part:-top}: $(printf '%s\n' "$lines" | wc -l) files ok"
done

# -- 5. this machine -------------------------------------------------------------------------
step "This machine"
read_pack() { # a value of pack.json (verified by now), by its path of keys
    "$PYTHON" -c 'import json, sys
value = json.load(open("pack.json"))
for key in sys.argv[1:]:
    value = value[key]
print(" ".join(value) if isinstance(value, list) else value)' "$@"
}
[ -x "$PYTHON" ] || die "$PYTHON not found: the service runs on the system's python3 (apt-get install python3 python3-venv)"
pythons=$(read_pack needs python)
here=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case " $pythons " in
*" $here "*) echo "   python $here: the wheelhouse serves it" ;;
*) die "$PYTHON is python $here; this pack carries wheels for python $pythons only. Make a pack with --python $here." ;;
esac
glibc=$(read_pack needs glibc)
have=$(getconf GNU_LIBC_VERSION 2>/dev/null | cut -d' ' -f2)
if [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$glibc" "$have" | sort -V | head -n 1)" != "$glibc" ]; then
    die "this machine has glibc $have; the pack's engine and wheels need $glibc or newer (a newer distribution, e.g. Debian 12 or Ubuntu 22.04)"
fi
echo "   glibc ${have:-?} (the pack needs $glibc)"
ENGINE=$PACK/engine
if [ ! -x "$ENGINE/bin/llama-server" ]; then
    # A FAT stick keeps no execute bits: copy the (verified) engine and give them back.
    if [ "$DRY_RUN" -eq 1 ] || [ "$VERIFY_ONLY" -eq 1 ]; then
        echo "   the engine is not executable on this medium: it would be copied to a temporary folder first"
        ENGINE=""
    else
        STAGE=$(mktemp -d /var/tmp/offgrid-pack.XXXXXX)
        echo "   the engine is not executable on this medium: copying it to $STAGE"
        cp -r "$PACK/engine" "$STAGE/engine"
        chmod -R u+rwX,go+rX "$STAGE"
        chmod a+x "$STAGE/engine/bin/llama-server" "$STAGE/engine/bin/ggml-rpc-server"
        ENGINE=$STAGE/engine
    fi
fi
if [ -n "$ENGINE" ]; then
    if ! version=$("$ENGINE/bin/llama-server" --version 2>&1); then
        die "the engine does not run here:
$(printf '%s\n' "$version" | tail -n 5 | sed 's/^/   /')
   (it needs libstdc++6 and libgomp1: apt-get install libgomp1 from the distribution's media)"
    fi
    echo "   the engine runs: $(printf '%s\n' "$version" | grep -m 1 '^version' || echo '?')"
fi
if [ "$VERIFY_ONLY" -eq 1 ]; then
    step "The pack is whole and signed; --verify-only: nothing installed"
    exit 0
fi

# -- install ---------------------------------------------------------------------------------
ARGS=(--wheelhouse "$PACK/wheelhouse" --engine "${ENGINE:-$PACK/engine}")
if [ -f "$PACK/models/offgrid-models/manifest.json" ]; then
    ARGS+=(--models "$PACK/models/offgrid-models")
fi
step "Installing: source/install.sh ${ARGS[*]} ${PASS[*]:-}"
bash "$PACK/source/install.sh" "${ARGS[@]}" "${PASS[@]}"
