"""Checking values that come from outside: an LMTP op's fields, a text prediction's inputs.

One set of rules (a bool is not a number, a number is finite, an integer may arrive as ``5.0``
from JSON) and one way of saying what is wrong: each check raises :class:`Unexpected`, which
knows what was wanted and what came, and the caller words the sentence for its own audience
(``field 'top_k' must be ...`` for LMTP, ``top_k must be ...`` for a text input).
"""

from __future__ import annotations

import json
import math


class Unexpected(ValueError):
    """A value is not what was wanted."""

    def __init__(self, wanted: str, value: object) -> None:
        self.wanted = wanted
        """What would do, e.g. ``an integer of at least 1``."""
        self.got = preview(value)
        super().__init__(f"expected {wanted}, got {self.got}")

    def sentence(self, subject: str) -> str:
        """``{subject} must be {wanted}, got {value}``, for ``subject`` such as ``field 'x'``."""
        return f"{subject} must be {self.wanted}, got {self.got}"


def is_integer(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (Python's ``True`` is an int; no caller means it so)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite ``int`` or ``float``, not a ``bool``."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def integer(value: object, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within the bounds; an integral float (``5.0``, as JSON may carry
    it) counts as that integer.

    Raises:
        Unexpected: anything else.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if (
        not is_integer(value)
        or (minimum is not None and value < minimum)  # type: ignore[operator]
        or (maximum is not None and value > maximum)  # type: ignore[operator]
    ):
        raise Unexpected(_integer_wanted(minimum, maximum), value)
    return value  # type: ignore[return-value]


def number(
    value: object,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
) -> float:
    """``value`` as a finite float within the bounds (``above``: exclusive).

    Raises:
        Unexpected: anything else.
    """
    if not (
        is_number(value)
        and (minimum is None or value >= minimum)  # type: ignore[operator]
        and (above is None or value > above)  # type: ignore[operator]
        and (maximum is None or value <= maximum)  # type: ignore[operator]
    ):
        bounds = [
            f"at least {minimum:g}" if minimum is not None else None,
            f"above {above:g}" if above is not None else None,
            f"at most {maximum:g}" if maximum is not None else None,
        ]
        wanted = " and ".join(bound for bound in bounds if bound)
        raise Unexpected(f"a number {wanted}" if wanted else "a finite number", value)
    return float(value)  # type: ignore[arg-type]


def preview(value: object, limit: int = 60) -> str:
    """``value`` as JSON, shortened: short enough for one sentence, exact enough to recognise."""
    try:
        text = json.dumps(value, default=repr)
    except ValueError:  # a circular structure
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _integer_wanted(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"an integer of at least {minimum}"
    if maximum is not None:
        return f"an integer of at most {maximum}"
    return "an integer"
