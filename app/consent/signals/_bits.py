"""A strict bit reader over base64url text, shared by the TCF and GPP decoders.

Unlike the readers in ``iab-tcf`` (which answer ``True`` for every bit read past
the end of the input), this one raises :class:`Truncated` the moment a read
would run past the last bit actually present.
"""

from __future__ import annotations

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}
_BITS = {c: format(i, "06b") for i, c in enumerate(_ALPHABET)}


class SignalError(Exception):
    """A consent string is malformed; ``reason`` is short and never echoes the input."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Truncated(SignalError):
    pass


def is_base64url(s: str) -> bool:
    return bool(s) and all(c in _VALUE for c in s)


class BitReader:
    """Reads big-endian unsigned integers from the 6-bit groups of a base64url string."""

    def __init__(self, segment: str, what: str) -> None:
        if not segment:
            raise SignalError(f"{what} is empty")
        if not is_base64url(segment):
            raise SignalError(f"{what} has characters outside the base64url alphabet")
        self._bits = "".join(_BITS[c] for c in segment)
        self.length = len(self._bits)
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return self.length - self.pos

    def peek_int(self, n: int, at: int = 0) -> int:
        start = self.pos + at
        if start + n > self.length:
            raise Truncated(f"{self.what} is truncated")
        return int(self._bits[start : start + n], 2) if n else 0

    def uint(self, n: int) -> int:
        v = self.peek_int(n)
        self.pos += n
        return v

    def flag(self) -> bool:
        return self.uint(1) == 1

    def skip(self, n: int) -> None:
        self.peek_int(0, n)  # raises if the n bits are not all present
        self.pos += n

    def bitfield(self, n: int) -> set[int]:
        """n bits as the set of 1-based positions that are set."""
        self.peek_int(0, n)  # raises if the n bits are not all present
        bits = self._bits[self.pos : self.pos + n]
        self.pos += n
        return {i + 1 for i, bit in enumerate(bits) if bit == "1"}

    def letters(self, n: int, field: str) -> str:
        out = []
        for _ in range(n):
            v = self.uint(6)
            if v > 25:
                raise SignalError(f"{field} is not a two-letter code")
            out.append(chr(ord("A") + v))
        return "".join(out)

    def fibonacci(self) -> int:
        """One Fibonacci-coded positive integer (Zeckendorf bits from F(2)=1 upwards, ended by "11")."""
        total = 0
        a, b = 1, 2
        previous = 0
        while True:
            bit = self.uint(1)
            if bit and previous:
                return total
            if bit:
                total += a
            previous = bit
            a, b = b, a + b
            if a > 1 << 20:
                raise SignalError(f"{self.what} has an oversized Fibonacci integer")

    def bytes_padded(self) -> bytes:
        """All bits present, zero-padded to whole bytes (for decoders that want bytes)."""
        bits = self._bits + "0" * (-self.length % 8)
        return int(bits, 2).to_bytes(len(bits) // 8, "big")

    def finish(self, max_padding: int) -> None:
        """The bits after the last field must be zero padding, and fewer than ``max_padding``."""
        rest = self.remaining
        if rest >= max_padding:
            raise SignalError(f"{self.what} is longer than its fields")
        if rest and self.peek_int(rest) != 0:
            raise SignalError(f"{self.what} has non-zero padding")
