"""The generic fallback, registered ``trylast``: layer ids for models that no plugin claims.

Two strategies, tried in order:

1. timm's ``group_matcher()`` when the model has one: the exact layer map timm's
   ``param_groups_layer_decay`` uses, so ``recipe="timm"`` reproduces timm parameter by parameter.
2. The repeated block container found in the module tree (the ``nn.ModuleList``/``nn.Sequential`` of
   same-typed blocks that holds the most parameters), joined by its neighbouring siblings that hold blocks
   of the same type (a torchvision ResNet's ``layer1`` .. ``layer4``): what comes before them -> 0, their
   blocks -> 1..N (a block that itself holds a repeated container is expanded into its sub-blocks), the
   rest -> top.

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
    """A ``ModuleList``/``Sequential`` of blocks of one type."""

    path: str
    blocks: list[str]  # the blocks' paths, in order
    kind: type  # the blocks' class
    numel: int  # elements of the parameters under it (a tied one counts where the walk first met it)


def _same_typed_blocks(module: nn.Module, least: int) -> tuple[list[str], type] | None:
    """The names of ``module``'s children and their type when there are at least ``least``, all of one type;
    else None."""
    # A block wrapped per block (FSDP1 auto-wrap, activation checkpointing) is typed by what it wraps.
    children = [(name, unwrap(child)) for name, child in module._modules.items() if child is not None]
    if len(children) < least:
        return None
    first = type(children[0][1])
    if any(type(child) is not first for _, child in children):
        return None
    return [name for name, _ in children], first


def _repeated_containers(view: ModelView, totals: list[int]) -> list[_Container]:
    """Every container of same-typed blocks that holds parameters, in tree order (``totals``: the running
    sum of the view's parameter elements, see :func:`_block_container_map`)."""
    found = (_container_at(view, path, module, totals, least=2) for path, module in view.modules_of_type(_CONTAINERS))
    return [container for container in found if container is not None]


def _container_at(view: ModelView, path: str, module: nn.Module, totals: list[int], least: int) -> _Container | None:
    """``module`` (a ``ModuleList``/``Sequential`` at ``path``) as a container of at least ``least`` blocks of
    one type that hold parameters; else None."""
    same_typed = _same_typed_blocks(module, least)
    span = view.span(path)
    if same_typed is None or not span:
        return None
    blocks, kind = same_typed
    prefix = f"{path}." if path else ""
    return _Container(path, [prefix + name for name in blocks], kind, totals[span.stop] - totals[span.start])


def _largest(containers: Iterable[_Container]) -> _Container | None:
    """The container with the most parameter elements; on a tie the first in tree order."""
    best = None
    for container in containers:
        if best is None or container.numel > best.numel:
            best = container
    return best


def _sibling_run(
    view: ModelView, largest: _Container, containers: list[_Container], totals: list[int]
) -> list[_Container]:
    """``largest`` and the siblings next to it that are containers of blocks of its type (a single block
    will do), in order: the stages of a network whose stages are separate attributes (a ResNet's ``layer1``
    .. ``layer4``, an EfficientNet's ``features.1`` .. ``features.7``). Siblings without parameters (an
    activation, a pool) are passed over; any other sibling with parameters ends the run."""
    parent = largest.path.rpartition(".")[0]
    module = view.module(parent) if largest.path else None
    prefix = f"{parent}." if parent else ""
    siblings = [] if module is None else [prefix + name for name, child in module._modules.items() if child is not None]
    if largest.path not in siblings:
        return [largest]
    known = {container.path: container for container in containers}

    def neighbours(paths: Iterable[str]) -> list[_Container]:
        found = []
        for path in paths:
            sibling = known.get(path)
            if sibling is None and isinstance(candidate := view.module(path), _CONTAINERS):
                sibling = _container_at(view, path, candidate, totals, least=1)  # a stage of a single block
            if sibling is not None and sibling.kind is largest.kind:
                found.append(sibling)
            elif view.span(path):
                break
        return found

    at = siblings.index(largest.path)
    before = neighbours(reversed(siblings[:at]))
    return [*reversed(before), largest, *neighbours(siblings[at + 1:])]


def _block_container_map(view: ModelView) -> LayerMap | None:
    """Layer ids from the largest container of same-typed blocks and its like siblings (see
    :func:`_sibling_run`): what comes before them -> 0, their blocks -> 1..N, the rest -> top. A block whose
    own largest container holds at least half of it (a stage of blocks) is expanded into that container's
    blocks, its other parameters going with its first one."""
    # A module's parameters are one span of the view, so its size is a difference of two running sums,
    # whatever its depth (no walk of each subtree).
    totals = [0, *accumulate(map(prod, view.shapes))]
    containers = _repeated_containers(view, totals)
    largest = _largest(containers)
    if largest is None:
        return None
    run = _sibling_run(view, largest, containers, totals)
    blocks = [block for container in run for block in container.blocks]
    # The containers inside each block, found from their own paths (a dict lookup per ancestor) rather than
    # by a search of every container per block.
    block_set = set(blocks)
    run_paths = {container.path for container in run}
    inside: dict[str, list[_Container]] = {}
    for container in containers:
        path = container.path
        while path:
            path = path.rpartition(".")[0]
            if path in block_set:
                inside.setdefault(path, []).append(container)
                break
            if path in run_paths:
                break
    # Each block's (or sub-block's) span and index in the flat block sequence; an expanded block's span
    # comes before those of its sub-blocks, which overwrite it.
    numbered: list[tuple[range, int]] = []
    count = 0
    in_blocks = 0  # parameters under the blocks
    for block in blocks:
        span = view.span(block)
        in_blocks += len(span)
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
    has_after = in_blocks < len(view) - first
    top = count + offset if has_after else count + offset - 1
    ids = [top] * len(view)
    ids[:first] = [0] * first
    for span, index in numbered:
        ids[span.start:span.stop] = [index + offset] * len(span)
    where = ", ".join(f"'{container.path}'" for container in run) if largest.path else "the root"
    return LayerMap(ids, top + 1, f"repeated blocks in {where} ({count} blocks)")


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
