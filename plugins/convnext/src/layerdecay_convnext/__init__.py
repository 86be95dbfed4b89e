"""layerdecay plugin for ConvNeXt (v1, v2, head-norm-first) from timm, torchvision, transformers and the paper's repo.

The module itself is the plugin object (entry point ``convnext`` in the group ``layerdecay``). It claims
a model when it finds a ConvNeXt in it by structure (see :mod:`layerdecay_convnext._layout`), wherever it
sits: the whole model, an HF ``*For*`` class's base model, a detector's ``backbone``, a user's wrapper.

Recipes (``recipe=``):

- ``"official"`` (default): the ConvNeXt paper's 12-group rule, generalized to any depth.
- ``"block"``: one id per block, each downsample with its stage's first block.
- ``"stage"``: one id per stage, each downsample with its stage.
- ``"timm"``: the ids of timm's ``param_groups_layer_decay`` (``group_matcher``), for any library.

Weight decay needs no plugin policy: the core decides by meaning (norms and GRN by module type, layer
scale by name), so torchvision's ``[C,1,1]`` layer scale and transformers' ``[1,1,1,4C]`` GRN get the
same decision as timm's 1-D ones.
"""

from __future__ import annotations

from layerdecay import ModelView, hookimpl, select_recipe
from layerdecay_convnext._layout import Layout, find_layout_and_spans
from layerdecay_convnext._recipes import RECIPES, LayerIds, layer_ids

__all__ = ["PLUGIN_NAME", "RECIPES", "layerdecay_layer_id", "layerdecay_num_layers", "layout_of"]

PLUGIN_NAME = "convnext"
_OWNER = "the convnext plugin"


def layout_of(model: ModelView) -> Layout | None:
    """The ConvNeXt found in the model (memoized in the view's cache), or None when there is none."""
    return _analysis(model)["layout"]


def _analysis(model: ModelView) -> dict:
    """The plugin's per-plan cache: the layout, the spans of its roles' modules, the ids of each recipe."""
    cache = model.cache.get(PLUGIN_NAME)
    if cache is None:
        found = find_layout_and_spans(model)
        layout, spans = (None, None) if found is None else found
        cache = model.cache[PLUGIN_NAME] = {"layout": layout, "spans": spans}
    return cache


def _ids(model: ModelView, recipe: str | None) -> LayerIds | None:
    cache = _analysis(model)
    layout = cache["layout"]
    if layout is None:
        return None
    resolved = select_recipe(recipe, RECIPES, owner=_OWNER)
    found = cache.get(resolved)
    if found is None:
        found = cache[resolved] = layer_ids(layout, model, resolved, cache["spans"])
    return found


@hookimpl
def layerdecay_num_layers(model: ModelView, recipe: str | None) -> int | None:
    """Claim ConvNeXt models; the count follows the model's own depths, frozen parameters included."""
    found = _ids(model, recipe)
    return None if found is None else found.num_layers


@hookimpl
def layerdecay_layer_id(model: ModelView, recipe: str | None, num_layers: int) -> list[int] | None:
    """Stem, downsample and block parameters by the recipe; everything else (norm, head, neck) at the top.

    The answer is the ids themselves, aligned with ``model.names``: the core calls nothing per parameter.
    """
    found = _ids(model, recipe)
    if found is None:
        return None
    return found.aligned(len(model.names), num_layers - 1)
