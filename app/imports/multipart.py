"""An incremental ``multipart/form-data`` reader: parts arrive as events while the body streams
in, holding at most one network chunk plus a boundary in memory, and nothing on disk.

Litestar's own multipart support reads the whole body and spools files to the temporary
folder in plaintext; uploads of personal data must be encrypted as they arrive instead.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.errors import InvalidField, TooLarge

MAX_HEADER_BYTES = 16 * 1024
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@dataclass
class PartStart:
    name: str
    filename: str | None
    content_type: str


@dataclass
class PartData:
    data: bytes


@dataclass
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type (422 if it has none)."""
    kind, _, rest = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise InvalidField("must be multipart/form-data", field="Content-Type")
    for key, value in _PARAM.findall(";" + rest):
        if key.lower() == "boundary":
            value = value.strip().strip('"')
            if 0 < len(value) <= 200:
                return value.encode("latin-1", "replace")
    raise InvalidField("has no multipart boundary", field="Content-Type")


def _disposition(headers: dict[str, str]) -> tuple[str, str | None]:
    value = headers.get("content-disposition", "")
    kind, _, rest = value.partition(";")
    if kind.strip().lower() != "form-data":
        raise InvalidField("each part needs Content-Disposition: form-data", field="body")
    params: dict[str, str] = {}
    for key, raw in _PARAM.findall(";" + rest):
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key.lower()] = raw
    if "name" not in params:
        raise InvalidField("each part needs a name", field="body")
    filename = params.get("filename")
    if "filename*" in params:  # RFC 5987: charset'lang'percent-encoded
        from urllib.parse import unquote

        _charset, _, encoded = params["filename*"].partition("'")
        filename = unquote(encoded.partition("'")[2] or encoded, errors="replace")
    return params["name"], filename


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\r\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise InvalidField("a part header is malformed", field="body")
        headers[key.strip().lower()] = value.strip()
    return headers


async def read_parts(chunks: AsyncIterator[bytes], boundary: bytes) -> AsyncIterator[Event]:
    """Events for each part: its start (name, filename), its data in pieces, its end."""
    delimiter = b"--" + boundary
    inner = b"\r\n" + delimiter
    buf = bytearray()
    state = "preamble"
    source = chunks.__aiter__()
    done = False

    async def more() -> bool:
        nonlocal done
        if done:
            return False
        try:
            buf.extend(await source.__anext__())
        except StopAsyncIteration:
            done = True
            return False
        return True

    while True:
        if state == "preamble":
            at = buf.find(delimiter)
            if at < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise InvalidField("the multipart boundary was not found", field="body")
                if not await more():
                    raise InvalidField("the multipart body is empty or truncated", field="body")
                continue
            del buf[: at + len(delimiter)]
            state = "after_delimiter"
        elif state == "after_delimiter":
            if len(buf) < 2 and await more():
                continue
            if buf[:2] == b"--":
                return
            if buf[:2] != b"\r\n":
                raise InvalidField("the multipart body is malformed", field="body")
            del buf[:2]
            state = "headers"
        elif state == "headers":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise TooLarge("a part's headers are too large", field="body")
                if not await more():
                    raise InvalidField("the multipart body is truncated", field="body")
                continue
            headers = _headers(bytes(buf[:end]))
            del buf[: end + 4]
            name, filename = _disposition(headers)
            yield PartStart(name, filename, headers.get("content-type", "text/plain"))
            state = "data"
        else:  # data: everything up to CRLF--boundary; keep a tail that may be its beginning
            at = buf.find(inner)
            if at >= 0:
                if at:
                    yield PartData(bytes(buf[:at]))
                del buf[: at + len(inner)]
                yield PartEnd()
                state = "after_delimiter"
                continue
            keep = len(inner) - 1
            if len(buf) > keep:
                yield PartData(bytes(buf[: len(buf) - keep]))
                del buf[: len(buf) - keep]
            if not await more():
                raise InvalidField("the multipart body is truncated", field="body")
