"""A run's file, written as its chunks come: each chunk is encoded (CSV, NDJSON or an ad
platform's hashes) while the next ones are opened, and the file is written once, complete,
when the run ends (0600, one person a line; nothing at all for a refused ad audience).

Its recipient rows are kept until then and written in one go (one COPY or executemany
instead of a transaction per chunk): a file run taken over after its process died starts
again from nothing (``runs._forget_earlier``), so rows written earlier would serve no one.
Meanwhile the run's progress is shown through its heartbeat."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from app.activation import audiences
from app.activation.delivery import Outbound, cell, write_private
from app.activation.destinations import dumps, export_dir
from app.activation.models import Destination
from app.activation.proof import Recipients


class Writer(Protocol):
    """Where recorded rows go (``runs.RowWriter``)."""

    recipients: Recipients

    def push(self, rows: list[tuple[Any, ...]]) -> None: ...

    def progress(self, sent: int) -> None: ...

    def check(self) -> None: ...

    async def close(self) -> None: ...


class FileSink:
    """One file per run in the destination's folder; recipients numbered by line."""

    def __init__(self, dest: Destination, run_id: str, region: str, writer: Writer) -> None:
        self.dest, self.run_id, self.region, self.writer = dest, run_id, region, writer
        self.fmt = "csv" if dest.kind == "ad_audience" else str(dest.config.get("format", "csv"))
        self.file_id = str(uuid.uuid4())
        self.recipients = writer.recipients
        self.names: list[str] = []
        self.parts: list[tuple[int, str]] = []
        """Encoded chunks, each with the number of CSV columns known when it was encoded."""
        self.lines = 0
        self.held: list[tuple[Any, ...]] = []

    def count(self) -> int:
        return self.lines

    async def put(self, people: list[Outbound]) -> None:
        self.writer.check()
        if not people:
            return
        now = datetime.now(UTC)
        self.held += self.recipients.rows(people, "sent", 0, now, self.file_id, self.lines + 1)
        self.parts.append((len(self.names), self._encode(people)))
        self.lines += len(people)
        if self.dest.kind != "ad_audience":  # an audience counts only once large enough
            self.writer.progress(self.lines)

    def _encode(self, people: list[Outbound]) -> str:
        buf = io.StringIO()
        if self.dest.kind == "ad_audience":
            w = csv.writer(buf, lineterminator="\n")
            platform = str(self.dest.config["platform"])
            for p in people:
                hashed = audiences.hashed_row(platform, p.fields, self.region)
                w.writerow([hashed.get("email", ""), hashed.get("phone", "")])
        elif self.fmt == "csv":
            known = set(self.names)
            self.names += sorted({k for p in people for k in p.fields} - known)
            names, w = self.names, csv.writer(buf, lineterminator="\n")
            w.writerows([p.ref, *[cell(p.fields.get(k)) for k in names]] for p in people)
        else:
            for p in people:
                buf.write(dumps({"id": p.ref, **p.fields}) + "\n")
        return buf.getvalue()

    def _text(self) -> str:
        if self.dest.kind == "ad_audience":
            head = ",".join(audiences.COLUMNS[str(self.dest.config["platform"])]) + "\n"
        elif self.fmt == "csv":
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerow(["id", *self.names])
            head = out.getvalue()
        else:
            head = ""
        body = []
        for known, text in self.parts:
            pad = "," * (len(self.names) - known) if self.fmt == "csv" and self.dest.kind != "ad_audience" else ""
            body.append(text.replace("\n", pad + "\n") if pad else text)
        return head + "".join(body)

    async def close(self, refuse: bool = False) -> Recipients:
        """Write the recipient rows and the file (unless refused); returns the recipients."""
        if not refuse:
            self.writer.push(self.held)
        await self.writer.close()
        if refuse or not self.lines:
            return self.recipients
        path = export_dir(self.dest) / f"{self.run_id}.{self.fmt}"
        write_private(path, self._text())
        self.recipients.file = {"id": self.file_id, "path": str(path), "format": self.fmt, "rows": self.lines}
        return self.recipients
