"""The generic fallback, registered ``trylast``: layer ids for models that no plugin claims.

Two strategies, tried in order:

1. timm's ``group_matcher()`` when the model has one: the exact layer map timm's
   ``param_groups_layer_decay`` uses, so ``recipe="timm"`` reproduces timm parameter by parameter.
2. The repeated block container found in the module tree (the ``nn.ModuleList``/``nn.Sequential`` of
   same-typed blocks that holds the most parameters): what comes before it -> 0, its blocks -> 1..N
   (a block that itself holds a repeated container is expanded into its sub-blocks), the rest -> top.

The plan records which strategy was used, and warns that a fallback decided the layer ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate, repeat
from math import prod
from typing import NamedTuple

from torch import nn

from layerdecay._markers import hookimpl
from layerdecay.model_view import ModelView, strip_wrapper_prefixes, unwrap
from layerdecay.recipes import select_recipe

PLUGIN_NAME = "generic"
RECIPES = ("timm",)


@dataclass(frozen=True)
class LayerMap:
    """A complete layer assignment: the id of every parameter, aligned with the view's names, and how it was
    found."""

    ids: list[int]
    num_layers: int
    strategy: str


def _timm_group_matcher_map(view: ModelView) -> LayerMap:
    from timm.models import group_parameters  # only for models that carry timm's matcher

    model = view.model
    raw = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    by_name = {strip_wrapper_prefixes(name): lid for name, lid in raw.items()}
    top = max(by_name.values(), default=0)
    return LayerMap(list(map(by_name.get, view.names, repeat(top))), top + 1, "timm group_matcher()")


_CONTAINERS = (nn.ModuleList, nn.Sequential)


class _Container(NamedTuple):
    """A ``ModuleList``/``Sequential`` of at least two blocks of one type."""

    path: str
    blocks: list[str]  # the blocks' paths, in order
    numel: int  # elements of the parameters under it (a tied one counts where the walk first met it)


def _same_typed_blocks(module: nn.Module) -> list[str] | None:
    """The names of ``module``'s children when there are at least two, all of one type; else None."""
    # A block wrapped per block (FSDP1 auto-wrap, activation checkpointing) is typed by what it wraps.
    children = [(name, unwrap(child)) for name, child in module._modules.items() if child is not None]
    if len(children) < 2:
        return None
    first = type(children[0][1])
    if any(type(child) is not first for _, child in children):
        return None
    return [name for name, _ in children]


def _repeated_containers(view: ModelView, totals: list[int]) -> list[_Container]:
    """Every container of same-typed blocks that holds parameters, in tree order (``totals``: the running
    sum of the view's parameter elements, see :func:`_block_container_map`)."""
    found = []
    for path, module in view.modules_of_type(_CONTAINERS):
        blocks = _same_typed_blocks(module)
        span = view.span(path)
        if blocks is None or not span:
            continue
        prefix = f"{path}." if path else ""
        found.append(_Container(path, [prefix + name for name in blocks], totals[span.stop] - totals[span.start]))
    return found


def _largest(containers: Iterable[_Container]) -> _Container | None:
    """The container with the most parameter elements; on a tie the first in tree order."""
    best = None
    for container in containers:
        if best is None or container.numel > best.numel:
            best = container
    return best


def _block_container_map(view: ModelView) -> LayerMap | None:
    """Layer ids from the largest container of same-typed blocks: what comes before it -> 0, its blocks ->
    1..N, the rest -> top. A block whose own largest container holds at least half of it (a stage of blocks)
    is expanded into that container's blocks, its other parameters going with its first one."""
    # A module's parameters are one span of the view, so its size is a difference of two running sums,
    # whatever its depth (no walk of each subtree).
    totals = [0, *accumulate(map(prod, view.shapes))]
    containers = _repeated_containers(view, totals)
    outer = _largest(containers)
    if outer is None:
        return None
    # The containers inside each block, found from their own paths (a dict lookup per ancestor) rather than
    # by a search of every container per block.
    block_set = set(outer.blocks)
    inside: dict[str, list[_Container]] = {}
    for container in containers:
        path = container.path
        while path:
            path = path.rpartition(".")[0]
            if path in block_set:
                inside.setdefault(path, []).append(container)
                break
            if path == outer.path:
                break
    # Each block's (or sub-block's) span and index in the flat block sequence; an expanded block's span
    # comes before those of its sub-blocks, which overwrite it.
    numbered: list[tuple[range, int]] = []
    count = 0
    for block in outer.blocks:
        span = view.span(block)
        numbered.append((span, count))
        inner = _largest(inside.get(block, ()))
        if inner is None or 2 * inner.numel < totals[span.stop] - totals[span.start]:
            count += 1
            continue
        for sub in inner.blocks:
            numbered.append((view.span(sub), count))
            count += 1
    starts = [span.start for span, _ in numbered if span]
    if not starts:
        return None  # the blocks hold no parameter (the container's own are all it has)
    first = min(starts)
    offset = 1 if first > 0 else 0
    # The blocks' spans are disjoint and start at ``first`` or later: anything after ``first`` they leave out
    # (a final norm, a head) takes a top id of its own.
    has_after = sum(len(view.span(block)) for block in outer.blocks) < len(view) - first
    top = count + offset if has_after else count + offset - 1
    ids = [top] * len(view)
    ids[:first] = [0] * first
    for span, index in numbered:
        ids[span.start:span.stop] = [index + offset] * len(span)
    where = outer.path or "the root"
    return LayerMap(ids, top + 1, f"repeated blocks in '{where}' ({count} blocks)")


def fallback_layer_map(view: ModelView) -> LayerMap | None:
    """The generic layer map of ``view``'s model, memoized in ``view.cache``; None when none is found."""
    if PLUGIN_NAME not in view.cache:
        if callable(getattr(type(view.model), "group_matcher", None)):
            view.cache[PLUGIN_NAME] = _timm_group_matcher_map(view)
        else:
            view.cache[PLUGIN_NAME] = _block_container_map(view)
    return view.cache[PLUGIN_NAME]


@hookimpl(trylast=True)
def layerdecay_num_layers(model: ModelView, recipe: str | None) -> int | None:
    layer_map = fallback_layer_map(model)
    if layer_map is None:
        return None
    select_recipe(recipe, RECIPES, owner="the generic fallback")
    return layer_map.num_layers


@hookimpl(trylast=True)
def layerdecay_layer_id(model: ModelView, recipe: str | None, num_layers: int) -> list[int] | None:
    layer_map = fallback_layer_map(model)
    if layer_map is None:
        return None
    return layer_map.ids
