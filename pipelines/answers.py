"""Reading the answer of a server we do not trust without letting it decide how much memory or time that takes.

A compressed answer inflates up to a thousandfold per layer of ``Content-Encoding`` (1 KB of ``gzip, gzip`` is over
a gigabyte), and httpx inflates whatever it reads in one call, with no bound, before a caller can count a byte. So
every request made for a caller asks for the bytes as stored (:data:`IDENTITY`), and :func:`read_answer` reads the
raw bytes and undoes a coding that a server applies anyway itself, a bounded piece at a time: memory stays a few
pieces whatever the data, the inflated bytes count against the caller's limit as they come, and the deadline is
checked between pieces, so even an answer that inflates to nothing (empty deflate blocks) ends on time.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx

IDENTITY = {"accept-encoding": "identity"}
"""The header of every request made for a caller (media, LoRAs, webhooks, the prompt expander)."""
PIECE = 64 * 1024
"""The most bytes one step of reading or inflating takes in or gives out."""
MAX_CODINGS = 4
"""More layers than anyone uses; a longer ``Content-Encoding`` list is refused rather than given a decoder each."""
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 32 + zlib.MAX_WBITS}
"""zlib's window setting per coding: gzip's format; for deflate, zlib's format (RFC 9110) or gzip's, whichever it is."""

Stage = tuple[str, Any]
"""A coding's name and the zlib decompressor undoing it."""


class AnswerTooLarge(ValueError):
    """An answer inflated (or came) past the byte limit its reader set."""


def read_answer(response: httpx.Response, max_bytes: int, deadline: float) -> Iterator[bytes]:
    """The body of a streamed ``response``, its ``Content-Encoding`` undone, in pieces of at most :data:`PIECE` bytes.

    Raises :class:`AnswerTooLarge` once more than ``max_bytes`` came out, ``httpx.TimeoutException`` past
    ``deadline`` (``time.monotonic()``), and ``httpx.DecodingError`` for a coding other than gzip and deflate, for
    more than :data:`MAX_CODINGS` of them, or for data that is not in its coding.
    """
    stages = _stages(response.headers.get("content-encoding", ""))
    size = 0
    for raw in response.iter_raw(PIECE):
        for piece in _undo(stages, raw, deadline):
            size += len(piece)
            if size > max_bytes:
                raise AnswerTooLarge(f"the answer is larger than {max_bytes} bytes")
            yield piece
        _check(deadline)


def _stages(header: str) -> list[Stage]:
    """Decoders for a ``Content-Encoding`` value, the last coding applied first."""
    codings = [c.strip().lower() for c in header.split(",") if c.strip().lower() not in ("", "identity")]
    if len(codings) > MAX_CODINGS:
        raise httpx.DecodingError(f"the answer has {len(codings)} content codings, more than {MAX_CODINGS}")
    unknown = [c for c in codings if c not in _WBITS]
    if unknown:
        raise httpx.DecodingError(f"unsupported content encoding {', '.join(unknown)} (asked for identity)")
    return [(coding, zlib.decompressobj(_WBITS[coding])) for coding in reversed(codings)]


def _undo(stages: list[Stage], data: bytes, deadline: float) -> Iterator[bytes]:
    """``data`` through ``stages``: no step takes in or gives out more than :data:`PIECE` bytes."""
    if not stages:
        if data:
            yield data
        return
    (coding, decoder), rest = stages[0], stages[1:]
    while True:
        _check(deadline)
        try:
            out = decoder.decompress(data, PIECE)
        except zlib.error as exc:
            raise httpx.DecodingError(f"the answer is not valid {coding} data ({exc})") from None
        yield from _undo(rest, out, deadline)
        data = decoder.unconsumed_tail
        if not data and len(out) < PIECE:  # a full piece may have more behind it, even with the input used up
            return


def _check(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise httpx.TimeoutException("deadline exceeded")
