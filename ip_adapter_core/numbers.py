"""The one parser for the text inputs that hold lists: number lists and 'target:value' entry lists.

Entries are separated by commas, semicolons or new lines (:func:`split_entries`); a number list also accepts spaces
between its numbers (:func:`parse_numbers`), so '1, 0.5', '1 0.5' and one number per line all read the same in every
input (schedule_values, frame_weights, image_weights). layer_weights' 'target: value' entries use the entry split,
since a space may stand beside the colon.
"""
from __future__ import annotations

import math
import re

from .errors import InputError

_ENTRIES = re.compile(r"[,;\n]")
_NUMBERS = re.compile(r"[,;\s]+")


def split_entries(text: str | None) -> list[str]:
    """The non-blank entries of ``text`` between commas, semicolons and new lines, stripped."""
    return [e.strip() for e in _ENTRIES.split(text or "") if e.strip()]


def parse_numbers(text: str | None, *, where: str, example: str, max_count: int | None = None) -> tuple[float, ...]:
    """'1, 0.8, 0.2' (commas, semicolons, spaces or new lines between numbers) -> (1.0, 0.8, 0.2); blank -> ().

    InputError, prefixed with ``where`` (e.g. "input 'schedule_values'"), for a token that is not a number, a value
    that is not finite, or more than ``max_count`` values; ``example`` is the list the message suggests."""
    tokens = [t for t in _NUMBERS.split((text or "").strip()) if t]
    if max_count is not None and len(tokens) > max_count:
        raise InputError(f"{where}: {len(tokens)} values; at most {max_count} are allowed.")
    values = []
    for i, tok in enumerate(tokens, 1):
        try:
            v = float(tok)
        except ValueError:
            raise InputError(f"{where}: value {i} ({tok!r}) is not a number; expected numbers separated by commas, "
                             f"such as '{example}'.") from None
        if not math.isfinite(v):
            raise InputError(f"{where}: value {i} ({tok!r}) is not a finite number.")
        values.append(v)
    return tuple(values)
