"""This node's identity on the LAN, and the TLS it speaks with peers.

A node is its ed25519 key (the one that signs its bundles, ``models.keys``) and a
self-signed certificate for that key, made on first use beside it
(``<data dir>/keys/node.crt``). A peer is known by the sha256 of its certificate, its
*fingerprint*, pinned when the two pair (``p2p.peers``); no certificate authority is
involved, and no name is checked: the pinned certificate is the only one a connection
accepts.

TLS 1.3 only. The listener asks every client for a certificate and verifies the one it gets
against the pinned ones (``CERT_OPTIONAL``): a stranger that shows a certificate fails the
handshake; a client that shows none gets through to the pairing exchange only (``listener``).
Pinned certificates change while the listener runs (pairing, forgetting): each handshake
takes the newest set through the SNI callback, which swaps the connection's context (its
verify store; OpenSSL keeps the verify *mode* of the first context, hence OPTIONAL there).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from offgrid.atomic_files import atomic_writer
from offgrid.errors import BadRequestError, IntegrityError
from offgrid.models.keys import Keys

__all__ = [
    "PAIRING_NAME",
    "Identity",
    "checked_cert",
    "client_context",
    "fingerprint",
    "server_context",
]

log = logging.getLogger("offgrid.p2p")

PAIRING_NAME = "pair.offgrid"  # the server name a client sends to pair: no certificate shown


@dataclass(frozen=True)
class Identity:
    """This node: its name, its certificate and the files TLS loads them from."""

    name: str
    cert_pem: str
    cert_path: Path
    key_path: Path

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_pem)

    def sign(self, data: bytes) -> str:
        """``data`` signed with this node's key, hex (a joiner proves it holds its key)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise IntegrityError(f"{self.key_path} is not an ed25519 key")
        return key.sign(data).hex()

    @classmethod
    def load(cls, keys: Keys, name: str) -> Identity:
        """This node's identity: the certificate of its key, made when missing or when it
        belongs to another key (the key was replaced)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        private = keys.private_key()
        cert_path, key_path = keys.folder / "node.crt", keys.folder / "node.key"
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        mine = private.public_key().public_bytes(*raw)
        if cert_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if cert.public_key().public_bytes(*raw) == mine:
                return cls(name, cert_path.read_text(), cert_path, key_path)
        pem = _self_signed(keys)
        with atomic_writer(cert_path) as fh:
            fh.write(pem.encode())
        return cls(name, pem, cert_path, key_path)


def _self_signed(keys: Keys) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    private = keys.private_key()
    public = private.public_key()
    key_id = x509.SubjectKeyIdentifier.from_public_key(public)
    # a subject of its own: OpenSSL finds an issuer by name, and nodes must not share one
    name = f"offgrid node {key_id.digest.hex()[:16]}"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))  # RTC-less boxes
        .not_valid_after(datetime.datetime(2099, 12, 31, tzinfo=datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_id, critical=False)
        .sign(private, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def checked_cert(pem: str) -> str:
    """A certificate a node sent to pair: one ed25519 certificate that signed itself,
    written anew (nothing trailing); BadRequestError otherwise. A malformed one pinned
    would make every handshake fail."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        key = cert.public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an ed25519 key")
        key.verify(cert.signature, cert.tbs_certificate_bytes)
    except (ValueError, InvalidSignature) as exc:
        raise BadRequestError(f"The pairing request carries no usable certificate: {exc}") from exc
    clean = cert.public_bytes(serialization.Encoding.PEM).decode()
    if pem.strip() != clean.strip():
        raise BadRequestError("The pairing request carries more than one certificate")
    return clean


def signed_by(cert_pem: str, data: bytes, signature: str) -> bool:
    """Whether ``signature`` (hex) over ``data`` was made by the key of ``cert_pem``."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
    if not isinstance(key, Ed25519PublicKey):
        return False
    try:
        key.verify(bytes.fromhex(signature), data)
    except (InvalidSignature, ValueError):
        return False
    return True


def fingerprint(cert: str | bytes) -> str:
    """The sha256 of a certificate (PEM text or DER bytes), as 64 hex digits."""
    der = ssl.PEM_cert_to_DER_cert(cert) if isinstance(cert, str) else cert
    return hashlib.sha256(der).hexdigest()


def public_key_of(cert_pem: str) -> str:
    """The ed25519 public key of a certificate, base64 (as ``models.keys`` writes keys)."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise IntegrityError("The peer's certificate does not hold an ed25519 key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


_NO_CHECK_TIME = 0x200000  # X509_V_FLAG_NO_CHECK_TIME: pinned, so dates mean nothing


def _context(purpose: ssl._SSLMethod, me: Identity | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # a pinned self-signed certificate is a trust anchor as it is, and clocks of offline
    # boxes drift: neither a chain nor the dates are asked for (OpenSSL reads these flags
    # from the first context of a connection: the listener's base one)
    ctx.verify_flags |= ssl.VerifyFlags.VERIFY_X509_PARTIAL_CHAIN | _NO_CHECK_TIME
    if me is not None:
        ctx.load_cert_chain(me.cert_path, me.key_path)
    return ctx


def _trusting(me: Identity, pinned: Iterable[str]) -> ssl.SSLContext:
    ctx = _context(ssl.PROTOCOL_TLS_SERVER, me)
    for cert in pinned:  # one at a time: a bad one is left out, not fatal to every handshake
        try:
            ctx.load_verify_locations(cadata=cert)
        except (ssl.SSLError, ValueError):
            log.warning("a pinned certificate cannot be read: that peer is refused")
    return ctx


def server_context(
    me: Identity, pinned: Callable[[], Iterable[str]], pairing: Callable[[], bool]
) -> ssl.SSLContext:
    """The listener's context: each handshake verifies against ``pinned()`` as it is then;
    one that asks to pair is refused unless ``pairing()`` says this node accepts it now."""
    base = _context(ssl.PROTOCOL_TLS_SERVER, me)
    base.verify_mode = ssl.CERT_OPTIONAL

    made: dict[tuple[str, ...], ssl.SSLContext] = {}  # the last set's context, reused

    def swap(conn: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        if name == PAIRING_NAME and not pairing():
            return ssl.ALERT_DESCRIPTION_ACCESS_DENIED
        certs = tuple(pinned())
        if certs not in made:
            made.clear()
            made[certs] = _trusting(me, certs)
        conn.context = made[certs]
        return None

    base.sni_callback = swap
    return base


def client_context(me: Identity, peer_cert: str | None) -> ssl.SSLContext:
    """A context to reach a peer: pinned to its certificate, showing ours; or, to pair
    (``peer_cert`` None), showing nothing and verifying nothing (the pairing proofs do)."""
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, me if peer_cert else None)
    ctx.check_hostname = False  # peers are pinned by certificate, not named
    if peer_cert:
        ctx.load_verify_locations(cadata=peer_cert)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
