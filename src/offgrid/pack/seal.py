"""The seal of a pack: ``SHA256SUMS`` of every file, its ed25519 signature, the signer's key.

The signature is the raw 64-byte ed25519 signature of the bytes of ``SHA256SUMS``, made
with this node's signing key (``offgrid.models.keys``); ``signer.pub`` is the public key
as PEM (SubjectPublicKeyInfo). So a target checks it with tools it has, before anything
of OffGrid is installed:

    openssl pkeyutl -verify -pubin -inkey signer.pub -rawin -in SHA256SUMS \\
        -sigfile SHA256SUMS.sig
    sha256sum -c --strict --quiet SHA256SUMS

``SHA256SUMS.sig`` is written last: a pack without it was interrupted and is refused.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from offgrid.atomic_files import Progress, atomic_writer, hash_file
from offgrid.errors import SetupError
from offgrid.models.keys import Keys
from offgrid.pack.parts import SAFE_NAME

__all__ = ["SEAL", "pack_files", "seal", "unseal"]

SUMS, SIGNATURE, SIGNER = "SHA256SUMS", "SHA256SUMS.sig", "signer.pub"
SEAL = (SUMS, SIGNATURE, SIGNER)


def pack_files(dest: Path) -> list[str]:
    """Every file under ``dest`` but the seal, relative and sorted; SetupError for anything
    that is not a plain file or whose name the installer would not accept."""
    names = []
    for folder, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(dest).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise SetupError(f"{path} is not a plain file; a pack holds plain files only")
            if not SAFE_NAME.fullmatch(rel):
                raise SetupError(
                    f"A pack cannot carry {rel!r}: its installer accepts names of letters, "
                    "digits and ._+@=- only, with no part starting with a dot. Rename it."
                )
            if rel not in SEAL:
                names.append(rel)
    return sorted(names)


def unseal(dest: Path) -> None:
    """Remove the seal (signature first): from now on the pack does not look complete."""
    for name in (SIGNATURE, SUMS, SIGNER):
        (dest / name).unlink(missing_ok=True)


def seal(dest: Path, known: Mapping[str, str], keys: Keys, progress: Progress) -> str:
    """Write SHA256SUMS for every file of the pack (hashes in ``known`` are trusted, the
    others computed), the signer's key and the signature; return the SHA256SUMS text."""
    lines = []
    for rel in pack_files(dest):
        digest = known.get(rel) or hash_file(dest / rel, progress)
        lines.append(f"{digest}  {rel}\n")
    sums = "".join(lines).encode()
    signature, public = keys.sign_bytes(sums)  # raw bytes, as openssl checks them
    for name, data in ((SIGNER, public), (SUMS, sums), (SIGNATURE, signature)):
        with atomic_writer(dest / name) as fh:
            fh.write(data)
    return sums.decode()
