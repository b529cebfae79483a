"""The node's signing key and the keys it trusts (ed25519, through ``cryptography``).

A node signs the bundles it exports with its own key, made on first use and readable only
by its owner (``<data dir>/keys/node.key``). It trusts the public keys listed one per line
in ``<data dir>/keys/trusted`` (base64 key, then a name) and always its own. Once any key is
trusted, bundles must be signed by one of them; before that, a valid signature from an
unknown key is reported, not refused. A signature that does not match is always refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offgrid.atomic_files import atomic_writer
from offgrid.errors import BadRequestError, IntegrityError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["Keys", "canonical", "signature_key"]

# cryptography is imported where a key is used, not with this module: the server imports
# it (through bundles and downloads) and would carry 7 MB more while idle.


def canonical(document: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the document without its signature, keys sorted."""
    body = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature_key(document: Mapping[str, Any], what: str) -> str | None:
    """The public key that signed ``document``, None if unsigned; IntegrityError if the
    signature does not match its contents."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    sig = document.get("signature")
    if sig is None:
        return None
    try:
        key = str(sig["public_key"])
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key, validate=True))
        public.verify(base64.b64decode(str(sig["value"]), validate=True), canonical(document))
    except (InvalidSignature, KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise IntegrityError(
            f"The signature of {what} does not match its contents: it was changed after it "
            "was signed. Nothing was imported; get the bundle again from its source."
        ) from exc
    return key


class Keys:
    """This node's key pair and the public keys it trusts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def private_key(self) -> Ed25519PrivateKey:
        """This node's private key, made on first use (readable by its owner only)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        path = self.folder / "node.key"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            with atomic_writer(path, mode=0o600) as fh:
                fh.write(pem)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise BadRequestError(f"{path} is not an ed25519 key")
        return key

    def public_key(self) -> str:
        """This node's public key, base64 (made on first use)."""
        from cryptography.hazmat.primitives import serialization

        raw = (
            self.private_key()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        return base64.b64encode(raw).decode()

    def sign_bytes(self, data: bytes) -> tuple[bytes, bytes]:
        """(raw ed25519 signature of ``data``, the public key as PEM): what ``openssl
        pkeyutl -verify -rawin`` checks, for files signed as they are (a pack's SHA256SUMS)."""
        from cryptography.hazmat.primitives import serialization

        private = self.private_key()
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return private.sign(data), pem

    def sign(self, document: Mapping[str, Any]) -> dict[str, str]:
        """The signature entry for ``document``."""
        value = self.private_key().sign(canonical(document))
        return {
            "algorithm": "ed25519",
            "public_key": self.public_key(),
            "value": base64.b64encode(value).decode(),
        }

    def trusted(self) -> dict[str, str]:
        """Trusted public keys and their names (this node's own key not included)."""
        path = self.folder / "trusted"
        if not path.exists():
            return {}
        keys = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            key, _, name = line.strip().partition(" ")
            if key and not key.startswith("#"):
                keys[key] = name.strip()
        return keys

    def trust(self, key: str, name: str = "") -> None:
        """Add a public key (base64, as ``offgrid signing-key`` prints it) to the trusted ones."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(base64.b64decode(key, validate=True))
        except (ValueError, binascii.Error) as exc:
            raise BadRequestError(
                f"'{key}' is not an ed25519 public key: copy it whole from `offgrid signing-key` "
                "on the node that signs"
            ) from exc
        if "\n" in name or "\r" in name:
            raise BadRequestError("A key's name must be one line")
        keys = self.trusted() | {key: name}
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = "".join(f"{k} {n}\n".replace(" \n", "\n") for k, n in keys.items())
        with atomic_writer(self.folder / "trusted") as fh:
            fh.write(text.encode())

    def judge(self, signer: str | None, what: str, *, allow_untrusted: bool) -> str:
        """Accept or refuse a bundle by its (already checked) signer; says which."""
        trusted = self.trusted()
        if signer is not None and signer == self.public_key():
            return "signed by this node"
        if signer is not None and signer in trusted:
            return f"signed by trusted key {trusted[signer] or signer}"
        who = "unsigned" if signer is None else f"signed by an unknown key {signer}"
        if trusted and not allow_untrusted:
            raise IntegrityError(
                f"{what} is {who}, and this node accepts only bundles signed by a trusted key. "
                "Trust the signer with `offgrid signing-key trust KEY`, or import with "
                "--allow-untrusted."
            )
        if signer is None:
            return "unsigned: checked against its manifest's hashes only"
        return f"{who}; trust it with `offgrid signing-key trust {signer}`"
