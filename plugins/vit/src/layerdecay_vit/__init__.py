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

from collections.abc import Callable, Iterable, Mapping
from itertools import chain, repeat

from layerdecay import ModelView, hookimpl, select_recipe
from layerdecay_vit._layout import FINAL_NORM, SHARED_REL_POS, STEM, ViTLayout, find_layout

__all__ = ["PLUGIN_NAME", "RECIPES", "layer_ids", "layerdecay_layer_id", "layerdecay_num_layers", "layout"]

PLUGIN_NAME = "vit"
RECIPES = ("mae", "beit", "timm")
_OWNER = "the vit plugin"


def layout(view: ModelView) -> ViTLayout | None:
    """The model's ViT layout, analysed once per plan (memoized in ``view.cache``)."""
    if PLUGIN_NAME not in view.cache:
        view.cache[PLUGIN_NAME] = find_layout(view)
    return view.cache[PLUGIN_NAME]


class _LayerIds(dict[str, int]):
    """Name -> layer id; a name the model does not have (nor the plan) gets the top id.

    Its ``__getitem__`` is the layer-id function handed to the core: a C-level lookup per name.
    """

    def __init__(self, ids: Mapping[str, int] | Iterable[tuple[str, int]], top: int) -> None:
        super().__init__(ids)
        self.top = top

    def __missing__(self, name: str) -> int:
        return self.top


def layer_ids(found: ViTLayout, recipe: str) -> tuple[dict[str, int], int]:
    """Every parameter name -> layer id under ``recipe``, and the number of layer ids.

    Built by C-level passes (a role lookup per name outside the blocks, a repeated id per block), not by
    Python work per parameter.
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
    ids = _LayerIds(zip(others, map(by_role.get, others.values(), repeat(top)), strict=True), top)
    # The blocks are one run of names (listed depth first): block i's parameters get i + 1.
    blocks = found.blocks
    block_ids = chain.from_iterable(map(repeat, range(1, len(blocks) + 1), map(len, blocks)))
    ids.update(zip(found.names[blocks[0].start:blocks[-1].stop], block_ids, strict=True))
    return ids, top + 1


def _plan_ids(view: ModelView, recipe: str | None) -> tuple[dict[str, int], int] | None:
    found = layout(view)
    if found is None:
        return None
    chosen = select_recipe(recipe, RECIPES, owner=_OWNER)
    key = f"{PLUGIN_NAME}:{chosen}"
    if key not in view.cache:
        view.cache[key] = layer_ids(found, chosen)
    return view.cache[key]


@hookimpl
def layerdecay_num_layers(model: ModelView, recipe: str | None) -> int | None:
    planned = _plan_ids(model, recipe)
    return None if planned is None else planned[1]


@hookimpl
def layerdecay_layer_id(model: ModelView, recipe: str | None, num_layers: int) -> Callable[[str], int] | None:
    planned = _plan_ids(model, recipe)
    if planned is None:
        return None
    ids = planned[0]
    top = num_layers - 1
    if not isinstance(ids, _LayerIds) or ids.top != top:
        ids = _LayerIds(ids, top)
    return ids.__getitem__
