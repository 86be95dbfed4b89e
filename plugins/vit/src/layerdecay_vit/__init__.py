"""layerdecay plugin for plain vision transformers: ViT, DeiT (distilled), DeiT-3, BEiT, EVA-02, DINOv2, CLIP.

The model is recognized by structure (see :mod:`layerdecay_vit._layout`), so timm, torchvision, transformers
4 and 5, and the research repos (MAE, DeiT, BEiT) get the same plan, bare, wrapped or nested as a backbone.

Recipes (``recipe=``):

- ``"mae"`` (default; MAE ``util/lr_decay.py``): tokens, position embedding, patch embedding -> 0;
  block ``i`` -> ``i + 1``; everything else (final norm, ``fc_norm``, heads) -> ``depth + 1``.
- ``"beit"`` (BEiT ``optim_factory.py``): the same ids; BEiT's shared relative-position bias goes to the top
  layer, which is also where MAE's rule puts it.
- ``"timm"`` (``timm.optim.param_groups_layer_decay`` through ``group_matcher()``): stem (incl. ``norm_pre``
  and the shared relative-position bias) -> 0; block ``i`` -> ``i + 1``; the final norm shares the last
  block's id; everything else -> a top layer that exists only when something is left for it.

Weight decay is left to the core's "by meaning" defaults, which already agree with every recipe here.
"""

from __future__ import annotations

from itertools import chain, repeat

from layerdecay import ModelView, hookimpl, select_recipe
from layerdecay_vit._layout import FINAL_NORM, SHARED_REL_POS, STEM, ViTLayout, find_layout

__all__ = [
    "PLUGIN_NAME", "RECIPES", "aligned_ids", "layer_ids", "layerdecay_layer_id", "layerdecay_num_layers", "layout",
]

PLUGIN_NAME = "vit"
RECIPES = ("mae", "beit", "timm")
_OWNER = "the vit plugin"


def layout(view: ModelView) -> ViTLayout | None:
    """The model's ViT layout, analysed once per plan (memoized in ``view.cache``)."""
    if PLUGIN_NAME not in view.cache:
        view.cache[PLUGIN_NAME] = find_layout(view)
    return view.cache[PLUGIN_NAME]


def aligned_ids(found: ViTLayout, recipe: str) -> tuple[list[int], int]:
    """The layer id of every parameter, aligned with the view's names, and the number of layer ids.

    Built by C-level passes (a role lookup per parameter outside the blocks, a repeated id per block), not
    by Python work per parameter; the core takes the list as it is.
    """
    depth = found.depth
    others = found.others
    if recipe == "timm":
        # timm's matcher: stem 0, blocks 1..depth, final norm merged into the last block (its 99999 suffix),
        # anything unmatched at max id + 1, counted over all parameters: no leftovers, no top layer.
        has_top = any(role not in (STEM, FINAL_NORM, SHARED_REL_POS) for role in others.values())
        top = depth + 1 if has_top else depth
        by_role = {STEM: 0, SHARED_REL_POS: 0, FINAL_NORM: depth}
    else:
        # MAE and BEiT: depth + 2 ids; the shared relative-position bias and the final norm are "the rest".
        top = depth + 1
        by_role = {STEM: 0, SHARED_REL_POS: top, FINAL_NORM: top}
    blocks = found.blocks
    start = blocks[0].start
    # ``others`` holds the parameters before and after the blocks, in listing order; the blocks are one run
    # of names (listed depth first) in which block i's parameters get i + 1.
    outside = list(map(by_role.get, others.values(), repeat(top)))
    inside = chain.from_iterable(map(repeat, range(1, len(blocks) + 1), map(len, blocks)))
    return [*outside[:start], *inside, *outside[start:]], top + 1


def layer_ids(found: ViTLayout, recipe: str) -> tuple[dict[str, int], int]:
    """Every parameter name -> layer id under ``recipe``, and the number of layer ids."""
    ids, count = aligned_ids(found, recipe)
    return dict(zip(found.names, ids, strict=True)), count


def _plan_ids(view: ModelView, recipe: str | None) -> tuple[list[int], int] | None:
    found = layout(view)
    if found is None:
        return None
    chosen = select_recipe(recipe, RECIPES, owner=_OWNER)
    key = f"{PLUGIN_NAME}:{chosen}"
    if key not in view.cache:
        view.cache[key] = aligned_ids(found, chosen)
    return view.cache[key]


@hookimpl
def layerdecay_num_layers(model: ModelView, recipe: str | None) -> int | None:
    planned = _plan_ids(model, recipe)
    return None if planned is None else planned[1]


@hookimpl
def layerdecay_layer_id(model: ModelView, recipe: str | None, num_layers: int) -> list[int] | None:
    """The ids themselves, aligned with the view's names (``num_layers`` is this plugin's own count)."""
    planned = _plan_ids(model, recipe)
    return None if planned is None else planned[0]
