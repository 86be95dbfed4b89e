"""Message helpers shared by every error and warning text."""

from __future__ import annotations

from collections.abc import Sequence


def listed(items: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are."""
    shown = ", ".join(items[:limit])
    more = len(items) - limit
    return shown + (f" and {more} more" if more > 0 else "")
