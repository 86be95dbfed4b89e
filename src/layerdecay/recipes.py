"""Recipe selection, shared by every plugin so that an unknown recipe reads the same everywhere."""

from __future__ import annotations

from collections.abc import Sequence

from layerdecay.errors import UnknownRecipeError

__all__ = ["select_recipe"]


def select_recipe(recipe: str | None, recipes: Sequence[str], *, owner: str) -> str:
    """Resolve ``recipe`` against the ones ``owner`` offers; None picks the first (the published one).

    Raises:
        UnknownRecipeError: ``recipe`` is not offered; the message lists the ones that are.
    """
    if recipe is None:
        return recipes[0]
    if recipe in recipes:
        return recipe
    offered = ", ".join(repr(r) for r in recipes)
    raise UnknownRecipeError(
        f"recipe={recipe!r} is not offered by {owner}, which handles this model; "
        f"choose one of {offered}, or recipe=None for the default ({recipes[0]!r})."
    )
