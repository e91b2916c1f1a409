"""How numbers appear in every table the package writes (summaries, the run index, the
comparison and the studies): one formatter, so the same value reads the same everywhere."""

from __future__ import annotations

import math
from typing import Any

DIGITS = 4  # significant digits shown


def number(v: Any, digits: int = DIGITS) -> str:
    """``v`` for a table: floats to ``digits`` significant digits (``nan``/``inf`` as such),
    ``None`` as ``n/a``, anything else (ints, text) as it is."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else str(v)
    return str(v)
