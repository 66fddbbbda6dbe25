"""Key material: versioned master keys (KEKs), the blind-index key and the ledger signing key.

Keys come from ``CONSENTRY_*`` variables in production. Without them, development key
files are generated under ``CONSENTRY_KEY_DIR`` with 0600 permissions and a warning.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.errors import KeyConfigurationError
from app.settings import Settings

log = structlog.get_logger(__name__)

MASTER_FILE = "master-keys.json"
INDEX_FILE = "blind-index.key"
SIGNING_FILE = "audit-signing.key"


def _b64key(text: str, what: str, size: int = 32) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise KeyConfigurationError(f"{what} is not valid base64") from exc
    if len(raw) != size:
        raise KeyConfigurationError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def _write_secret(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)


def _dev_warning(path: Path) -> None:
    log.warning(
        "DEVELOPMENT KEY GENERATED: not for production; set the CONSENTRY_* key variables",
        key_file=str(path),
    )


def _read_or_create(path: Path, make: str) -> str:
    if not path.exists():
        try:
            _write_secret(path, make)
            _dev_warning(path)
        except FileExistsError:  # another process created it first
            pass
    return path.read_text().strip()


@dataclass
class MasterKeyring:
    """Versioned key-encryption keys. New data keys are wrapped with ``active``;
    older versions stay readable so rotation needs no downtime."""

    keys: dict[int, bytes]
    active: int
    path: Path | None = None
    _mtime: float = 0.0
    _checked: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, settings: Settings) -> MasterKeyring:
        if settings.master_key:
            keys: dict[int, bytes] = {}
            for part in settings.master_key.split(","):
                version, _, value = part.rpartition(":")
                keys[int(version or 1)] = _b64key(value, "CONSENTRY_MASTER_KEY")
            return cls(keys=keys, active=max(keys))
        path = settings.key_dir / MASTER_FILE
        fresh = json.dumps({"active": 1, "keys": {"1": base64.b64encode(secrets.token_bytes(32)).decode()}})
        _read_or_create(path, fresh)
        ring = cls(keys={}, active=0, path=path)
        ring._reload()
        return ring

    def _reload(self) -> None:
        assert self.path is not None
        data = json.loads(self.path.read_text())
        self.keys = {int(v): _b64key(k, f"master key {v}") for v, k in data["keys"].items()}
        self.active = int(data["active"])
        self._mtime = self.path.stat().st_mtime

    def _refresh(self, force: bool = False) -> None:
        """Pick up a rotation made by another process (file keyrings only)."""
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        with self._lock:
            self._checked = now
            if force or self.path.stat().st_mtime != self._mtime:
                self._reload()

    def current(self) -> tuple[int, bytes]:
        self._refresh()
        return self.active, self.keys[self.active]

    def get(self, version: int) -> bytes:
        if version not in self.keys:
            self._refresh(force=True)
        try:
            return self.keys[version]
        except KeyError as exc:
            raise KeyConfigurationError(f"master key version {version} is not available") from exc

    def add_version(self) -> int:
        """Create a new active version in the key file (the first step of rotation)."""
        if self.path is None:
            raise KeyConfigurationError(
                "master keys come from CONSENTRY_MASTER_KEY: add a new version there "
                "('1:OLD,2:NEW'), restart, then run 'consentry keys rotate' to re-wrap"
            )
        with self._lock:
            self._reload()
            new = max(self.keys) + 1
            self.keys[new] = secrets.token_bytes(32)
            self.active = new
            data = {"active": new, "keys": {str(v): base64.b64encode(k).decode() for v, k in self.keys.items()}}
            tmp = self.path.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            _write_secret(tmp, json.dumps(data))
            tmp.replace(self.path)
            self._mtime = self.path.stat().st_mtime
        return new


def load_index_key(settings: Settings) -> bytes:
    """Secret for blind indexes; separate from the master keys and never shredded."""
    if settings.index_key:
        return _b64key(settings.index_key, "CONSENTRY_INDEX_KEY")
    text = _read_or_create(settings.key_dir / INDEX_FILE, base64.b64encode(secrets.token_bytes(32)).decode())
    return _b64key(text, "blind index key file")


def load_signing_key(settings: Settings) -> Ed25519PrivateKey:
    """Ed25519 key signing ledger checkpoints."""
    if settings.audit_signing_key:
        raw = _b64key(settings.audit_signing_key, "CONSENTRY_AUDIT_SIGNING_KEY")
    else:
        text = _read_or_create(settings.key_dir / SIGNING_FILE, base64.b64encode(secrets.token_bytes(32)).decode())
        raw = _b64key(text, "audit signing key file")
    return Ed25519PrivateKey.from_private_bytes(raw)


@dataclass
class KeyMaterial:
    """Everything the vault needs, loaded once per process."""

    master: MasterKeyring
    index_key: bytes
    signing_key: Ed25519PrivateKey


_loaded: dict[tuple[str, str, str, str], KeyMaterial] = {}
_resolved: dict[Path, str] = {}


def key_material(settings: Settings) -> KeyMaterial:
    """Key material for these settings (cached per process; the master ring refreshes itself)."""
    key_dir = _resolved.get(settings.key_dir)
    if key_dir is None:  # resolved once per path: callers ask for every sealed field
        key_dir = _resolved[settings.key_dir] = str(settings.key_dir.resolve())
    ident = (key_dir, settings.master_key, settings.index_key, settings.audit_signing_key)
    if ident not in _loaded:
        _loaded[ident] = KeyMaterial(MasterKeyring.load(settings), load_index_key(settings), load_signing_key(settings))
    return _loaded[ident]
