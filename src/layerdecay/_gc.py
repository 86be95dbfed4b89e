"""Planning allocates many small objects in one burst while a big model is alive.

Each burst would trigger full cyclic-GC passes over every object of the model (a deep model holds hundreds
of thousands), which can cost more than the planning itself; nothing planning creates is cyclic garbage.
So the collector is paused for the duration, and resumed after (only if it was running). The build API pauses
it over each whole call: resumed between planning and building the groups, it would find its allocation count
far past the threshold and run at once, over the plan and often over the whole model.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def gc_paused(function: F) -> F:
    """Run ``function`` with the cyclic garbage collector paused."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():
            return function(*args, **kwargs)
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            gc.enable()

    return wrapper  # type: ignore[return-value]
