"""Errors that reach the user as fal-shaped validation errors instead of tracebacks.

fal answers bad input with HTTP 422 and ``{"detail": [{"loc": ["body", field], "msg": ..., "type": ...}]}``.
Every part of the generation path raises :class:`InputError` for problems the caller can fix (an undecodable
video, an image URL that is not an image, a failed download), so the CLI can print one clear line and the server
can return the same body fal would.
"""

from __future__ import annotations

from typing import TypeAlias

Field: TypeAlias = "str | tuple[str | int, ...]"
"""An input field: its name, or its path into a list (``("ref_image_urls", 2)``)."""


class InputError(ValueError):
    """A problem with one input field that the caller can fix."""

    def __init__(self, field: Field, msg: str, type: str = "value_error") -> None:
        super().__init__(msg)
        self.loc: tuple[str | int, ...] = (field,) if isinstance(field, str) else tuple(field)
        self.msg = msg
        self.type = type

    def detail(self) -> list[dict[str, object]]:
        """The fal/FastAPI ``detail`` list for this error (fields are in the body unless the loc says otherwise)."""
        where = [] if self.loc and self.loc[0] in ("query", "header", "path") else ["body"]
        return [{"loc": [*where, *self.loc], "msg": self.msg, "type": self.type}]

    def __str__(self) -> str:
        where = ".".join(str(p) for p in self.loc)
        return f"{where + ': ' if where else ''}{self.msg} ({self.type})"


class FileTooLarge(ValueError):
    """One of the server's own files is larger than a job may take; raised before any of it is copied, so a job is
    refused an oversized object in a bucket without downloading it first."""


class JobCancelled(RuntimeError):
    """Raised from the per-step callback when the caller cancelled the job; aborts denoising at once."""
