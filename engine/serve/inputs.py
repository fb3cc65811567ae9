"""Parsing of the few request fields that arrive as text: thresholds and base64 images."""

from __future__ import annotations

import base64
import binascii

from engine.contract import check_threshold
from engine.errors import UsageError


def form_threshold(text: str | None) -> float | None:
    """A threshold sent as a form field: None when absent, else a finite number in [0, 1]."""
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"threshold must be a number in [0, 1], got {text[:40]!r}") from None
    return check_threshold(value)


def b64decode(text: str) -> bytes:
    """Strict base64 (a `data:` URI prefix is accepted): garbage is a 400, not a bad image."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("invalid base64 image data") from None
