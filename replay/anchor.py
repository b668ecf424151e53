"""Signed anchors: the log's head, signed with Ed25519 and kept somewhere else.

The hash chain shows nothing was altered in the middle of the log; it cannot
show the tail was cut or the whole chain rewritten. An anchor can: it is the
position and head hash at a moment, signed with a key only the writer holds.
An auditor with the public key checks that the log still holds exactly that
hash at that position.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.chain import timestamp
from ledger.errors import LedgerError

__all__ = ["Anchor", "check_signature", "load_private_key", "load_public_key", "new_key", "sign"]

_DOMAIN = "tradeledger-anchor/1"


class Anchor(msgspec.Struct, frozen=True, kw_only=True):
    """The head of one ledger at one moment, signed."""

    ledger_id: str
    position: int
    hash: str
    signed_at: str
    key_id: str
    signature: str

    def message(self) -> bytes:
        """The bytes the signature covers."""
        return msgspec.json.encode(
            [_DOMAIN, self.ledger_id, self.position, self.hash, self.signed_at]
        )

    @classmethod
    def parse(cls, text: str | bytes) -> Anchor:
        """An anchor from its JSON line; LedgerError if it is not one."""
        try:
            return msgspec.json.decode(text, type=cls)
        except msgspec.DecodeError as e:
            raise LedgerError(f"not an anchor: {e}") from e


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def new_key(path: str | Path) -> tuple[Path, Path]:
    """Write a new key pair: the private key at ``path`` (owner-only), the public at ``path.pub``."""
    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + ".pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise LedgerError(f"cannot read the private key {path}: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise LedgerError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise LedgerError(f"cannot read the public key {path}: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise LedgerError(f"{path} is not an Ed25519 public key")
    return key


def sign(
    ledger_id: str, position: int, head_hash: str, key: Ed25519PrivateKey, now: dt.datetime
) -> Anchor:
    """An anchor of ``(position, head_hash)`` signed with ``key``."""
    unsigned = Anchor(
        ledger_id=ledger_id,
        position=position,
        hash=head_hash,
        signed_at=timestamp(now),
        key_id=key_id(key.public_key()),
        signature="",
    )
    signature = base64.b64encode(key.sign(unsigned.message())).decode()
    return msgspec.structs.replace(unsigned, signature=signature)


def check_signature(anchor: Anchor, public: Ed25519PublicKey) -> bool:
    """Whether ``anchor`` was signed by the private half of ``public``."""
    try:
        public.verify(base64.b64decode(anchor.signature, validate=True), anchor.message())
    except (InvalidSignature, ValueError):
        return False
    return True
