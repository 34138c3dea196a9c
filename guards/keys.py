"""Ed25519 keys for signed records: the private key from the environment, the public keys from the trust root.

The private key is a path in `ORACLE_SIGNING_KEY` and never lives in the tree. The public keys that verify come
from the trust root (guards.trust), which lives outside the checkout; the keys committed under `policies/keys/`
count only under the development default, when no trust root is configured, and never where trust is required.
A key's id is derived from the key itself, so a renamed `.pub` file cannot make one key stand in for another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from guards import paths
from oracle_base.errors import ConfigurationError
from oracle_base.records.governance import Envelope, Signature, pae

PUBLIC_KEY_SUFFIX = ".pub"


class SigningKeyError(ConfigurationError):
    """A configured key file is missing, unreadable, malformed or not Ed25519."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex chars of the sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_signing_key(environ: Mapping[str, str] | None = None) -> Ed25519PrivateKey | None:
    """The private key named by ORACLE_SIGNING_KEY (unencrypted PKCS8 PEM); None when the variable is unset or empty."""
    env = os.environ if environ is None else environ
    value = env.get(paths.SIGNING_KEY_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    hint = f"point {paths.SIGNING_KEY_ENV} at an unencrypted Ed25519 PKCS8 PEM file, or unset it to work unsigned"
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SigningKeyError(f"signing key {path} (from {paths.SIGNING_KEY_ENV}) does not exist; {hint}") from exc
    except OSError as exc:
        raise SigningKeyError(
            f"signing key {path} (from {paths.SIGNING_KEY_ENV}) is unreadable: {exc}; {hint}"
        ) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError is what cryptography raises for an encrypted key loaded without a password
        raise SigningKeyError(f"signing key {path} is not an unencrypted PEM private key ({exc}); {hint}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"signing key {path} is a {type(key).__name__}, not Ed25519; {hint}")
    return key


def load_public_keys(root: Path) -> dict[str, Ed25519PublicKey]:
    """Every `policies/keys/*.pub` (PEM SubjectPublicKeyInfo), by key id; empty when the directory is absent.

    The keys live in the tree being checked, so a change could add its own key: they are trusted only under the
    development default (guards.trust), whose records are marked development-only and accepted by no gate that lets
    anything leave the machine. Under a trust root only its role keys verify."""
    directory = root / paths.PUBLIC_KEYS_DIR
    if not directory.is_dir():
        return {}
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(directory.glob(f"*{PUBLIC_KEY_SUFFIX}")):
        key = load_public_key(path, f"or remove it from {directory}")
        keys[key_id(key)] = key
    return keys


def load_public_key(path: Path, alternative: str = "") -> Ed25519PublicKey:
    """One Ed25519 public key in PEM (SubjectPublicKeyInfo); a private key file is accepted for its public half."""
    hint = (
        f"replace it with an Ed25519 public key in PEM (SubjectPublicKeyInfo){' ' + alternative if alternative else ''}"
    )
    try:
        data = path.expanduser().read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"public key {path} is unreadable: {exc}; {hint}") from exc
    try:
        key: object = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise SigningKeyError(f"public key {path} is not a PEM public key ({exc}); {hint}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"public key {path} is a {type(key).__name__}, not Ed25519; {hint}")
    return key


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new private key (mode 0600) and its public key; return the key id. Never overwrites a private key."""
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL with the mode at creation: the key is never world-readable, not even for a moment, and an
        # existing key (perhaps the only copy) is never silently replaced
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise SigningKeyError(
            f"private key {private_path} already exists; choose another path or remove it first"
        ) from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return key_id(private_key.public_key())


def sign(private_key: Ed25519PrivateKey, data: bytes) -> tuple[str, str]:
    """(key id, base64 signature) over data."""
    signature = private_key.sign(data)
    return key_id(private_key.public_key()), base64.b64encode(signature).decode("ascii")


def seal(payload_type: str, body: bytes, signing_keys: list[Ed25519PrivateKey]) -> Envelope:
    """The DSSE envelope of `body`, signed over its pre-authentication encoding by each key (none: unsigned). Every
    signed record of ours is sealed here and opened by `oracle_base.records.governance.Envelope.open`."""
    signatures = []
    for private_key in signing_keys:
        keyid, sig = sign(private_key, pae(payload_type, body))
        signatures.append(Signature(keyid=keyid, sig=sig))
    return Envelope.seal(payload_type, body, signatures)


def verify(public_keys: Mapping[str, Ed25519PublicKey], keyid: str, data: bytes, signature_b64: str) -> bool:
    """True only when keyid is a known key and the signature over data verifies with it."""
    public_key = public_keys.get(keyid)
    if public_key is None:
        return False
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(signature, data)
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True
