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

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from layerdecay._markers import hookimpl
from layerdecay.model_view import ModelView, strip_wrapper_prefixes, unwrap
from layerdecay.recipes import select_recipe

PLUGIN_NAME = "generic"
RECIPES = ("timm",)


@dataclass(frozen=True)
class LayerMap:
    """A complete layer assignment: every parameter name -> id, and how it was found."""

    ids: dict[str, int]
    num_layers: int
    strategy: str


def _timm_group_matcher_map(view: ModelView) -> LayerMap:
    from timm.models import group_parameters  # only for models that carry timm's matcher

    model = view.model
    raw = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    ids = {strip_wrapper_prefixes(name): lid for name, lid in raw.items()}
    return LayerMap(ids, max(ids.values(), default=0) + 1, "timm group_matcher()")


def _same_typed_blocks(module: nn.Module) -> list[tuple[str, nn.Module]] | None:
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return None
    # A block wrapped per block (FSDP1 auto-wrap, activation checkpointing) is typed by what it wraps.
    children = [(name, unwrap(child)) for name, child in module._modules.items() if child is not None]
    if len(children) < 2:
        return None
    first = type(children[0][1])
    if any(type(child) is not first for _, child in children):
        return None
    return children


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _largest_repeated_container(
    modules: dict[str, nn.Module], within: str = "", min_share: float = 0.0
) -> tuple[str, list[tuple[str, nn.Module]]] | None:
    """The container of same-typed blocks with the most parameters under ``within``."""
    prefix = within + "." if within else ""
    best: tuple[int, str, list[tuple[str, nn.Module]]] | None = None
    for path, module in modules.items():
        if within and not path.startswith(prefix):
            continue
        blocks = _same_typed_blocks(module)
        if blocks is None:
            continue
        size = _numel(module)
        if best is None or size > best[0]:
            best = (size, path, blocks)
    if best is None:
        return None
    if min_share and within and best[0] < min_share * _numel(modules[within]):
        return None
    return best[1], best[2]


def _block_container_map(view: ModelView) -> LayerMap | None:
    found = _largest_repeated_container(view.modules)
    if found is None:
        return None
    container, blocks = found
    # Block path -> position in the flat block sequence; a block that holds a repeated container of
    # its own (a stage of blocks) is expanded, and its other parameters go with its first sub-block.
    block_of: dict[str, int] = {}
    sub_paths: list[tuple[str, list[str]]] = []
    count = 0
    for name, _ in blocks:
        path = f"{container}.{name}" if container else name
        inner = _largest_repeated_container(view.modules, within=path, min_share=0.5)
        if inner is None:
            block_of[path] = count
            count += 1
            continue
        inner_path, inner_blocks = inner
        block_of[path] = count
        subs = [f"{inner_path}.{n}" for n, _ in inner_blocks]
        for sub in subs:
            block_of[sub] = count
            count += 1
        sub_paths.append((path, subs))

    def block_index(name: str) -> int | None:
        parts = name.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            index = block_of.get(".".join(parts[:depth]))
            if index is not None:
                return index
        return None

    raw: list[tuple[str, int | None]] = [(n, block_index(n)) for n in view.names]
    first = next(i for i, (_, b) in enumerate(raw) if b is not None)
    has_before = first > 0
    offset = 1 if has_before else 0
    has_after = any(b is None for _, b in raw[first:])
    top = count + offset if has_after else count + offset - 1
    ids = {}
    for i, (name, b) in enumerate(raw):
        ids[name] = b + offset if b is not None else (0 if i < first else top)
    where = container or "the root"
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
def layerdecay_layer_id(model: ModelView, recipe: str | None, num_layers: int) -> Callable[[str], int] | None:
    layer_map = fallback_layer_map(model)
    if layer_map is None:
        return None
    top = num_layers - 1
    ids = layer_map.ids
    return lambda name: ids.get(name, top)
