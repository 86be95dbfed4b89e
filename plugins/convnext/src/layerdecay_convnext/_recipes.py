"""The ConvNeXt recipes: a role (stem, downsample, block, norm_pre) -> layer id, for any depth.

Each recipe works on roles, never on a library's spelling, so the same configuration gets the same id for
the same module in timm, torchvision, transformers and the research repo. Parameters without a role
(final norm, head, a detector's neck) go to the top id. When nothing is left outside the backbone (a bare
feature extractor) there is no separate top, so no layer id is ever empty.
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass

from layerdecay import ModelView
from layerdecay_convnext._layout import NORM_PRE, Layout, Role

__all__ = ["RECIPES", "IdMap", "LayerIds", "layer_ids"]

# The first one is the default: the ConvNeXt paper's published recipe.
RECIPES = ("official", "block", "stage", "timm")

# timm sorts parameters by a key tuple (group ordinal, stage, block); norm_pre's key marks "same group as
# the previous key". Outside parameters (head) sort last.
_MERGE_WITH_PREVIOUS = "merge"


class IdMap(dict):
    """Name -> layer id for the parameters with a role; any other name (head, neck, unknown) gets ``top``.

    Its bound ``__getitem__`` serves as the layer-id function: one C-level dict lookup per name.
    """

    __slots__ = ("top",)

    def __init__(self, ids: dict[str, int] | None = None, top: int = 0) -> None:
        super().__init__(ids or ())
        self.top = top

    def __missing__(self, name: str) -> int:
        return self.top


@dataclass(frozen=True)
class LayerIds:
    """Layer ids of every parameter with a role (others: the top), and the number of ids."""

    ids: IdMap
    num_layers: int


def _official(role: Role, depths: tuple[int, ...]) -> int | None:
    """The ConvNeXt repo's 12-group rule, with the deep stage grouped by three blocks at any depth.

    For four stages: stem 0; stage 0 -> 1; stage 1 (with its downsample) -> 2; stage-2 downsample -> 3,
    stage-2 block b -> 3 + b // 3; stage 3 (with its downsample) -> 3 + ceil(depth2 / 3). With another
    number of stages, the stages before the penultimate one get one id each, the penultimate is grouped
    by three and the last gets one id.
    """
    kind = role[0]
    if kind == "stem":
        return 0
    if kind == NORM_PRE:
        return None
    stage = role[1]
    deep = len(depths) - 2  # the stage grouped by three
    if stage < deep:
        return stage + 1
    if stage == deep:
        return deep + 1 + (role[2] // 3 if kind == "block" else 0)
    return deep + 1 + math.ceil(depths[deep] / 3)


def _block(role: Role, depths: tuple[int, ...]) -> int | None:
    kind = role[0]
    if kind == "stem":
        return 0
    if kind == NORM_PRE:
        return None
    before = sum(depths[: role[1]])
    return 1 + before + (role[2] if kind == "block" else 0)


def _stage(role: Role, depths: tuple[int, ...]) -> int | None:
    kind = role[0]
    if kind == "stem":
        return 0
    if kind == NORM_PRE:
        return None
    return role[1] + 1


def _timm_key(role: Role) -> tuple[int, ...] | str:
    kind = role[0]
    if kind == "stem":
        return (0,)
    if kind == NORM_PRE:
        return _MERGE_WITH_PREVIOUS
    return (1, role[1], role[2] if kind == "block" else 0)


def _timm_ids(layout: Layout, names: tuple[str, ...]) -> LayerIds:
    """timm's ``group_matcher`` ordering: ordinals over the keys that hold parameters, frozen ones too."""
    keyed: dict[str, tuple[int, ...]] = {}
    merged: list[str] = []
    outside = False
    for name in names:
        role = layout.role_of(name)
        if role is None:
            outside = True
            continue
        key = _timm_key(role)
        if key == _MERGE_WITH_PREVIOUS:
            merged.append(name)
        else:
            keyed[name] = key  # type: ignore[assignment]
    ordinal = {key: i for i, key in enumerate(sorted(set(keyed.values())))}
    ids = {name: ordinal[key] for name, key in keyed.items()}
    last = len(ordinal) - 1
    ids.update(dict.fromkeys(merged, last))
    return LayerIds(ids, last + 1 + int(outside))


_RULES = {"official": _official, "block": _block, "stage": _stage}


def _ids_by_name(layout: Layout, names: tuple[str, ...], recipe: str) -> LayerIds:
    """Layer ids parameter by parameter: the general case, where one role's module holds another's."""
    if recipe == "timm":
        return _timm_ids(layout, names)
    rule = _RULES[recipe]
    ids: dict[str, int] = {}
    outside = False
    for name in names:
        role = layout.role_of(name)
        lid = rule(role, layout.depths) if role is not None else None
        if lid is None:
            outside = True
        else:
            ids[name] = lid
    backbone_top = max(ids.values(), default=0)
    return LayerIds(ids, backbone_top + 1 + int(outside))


def _role_runs(layout: Layout, view: ModelView) -> list[tuple[int, int, Role]] | None:
    """The parameters of each role as one run ``(start, stop, role)`` of the view, in order; None when two
    roles' modules nest (then a parameter's role is its nearest ancestor's, decided name by name)."""
    span_of = view.span
    runs = []
    for path, role in layout.roles.items():
        span = span_of(path)
        if span:
            runs.append((span.start, span.stop, role))
    runs.sort(key=operator.itemgetter(0))
    if any(b[0] < a[1] for a, b in itertools.pairwise(runs)):
        return None
    return runs


def _assign(names: tuple[str, ...], runs: list[tuple[int, int, int]]) -> IdMap:
    """Names of every run -> its id; adjacent runs with one id are handed out as one slice."""
    ids = IdMap()
    lid, start, stop = -1, 0, 0
    for a, b, run_id in runs:
        if run_id == lid and a == stop:
            stop = b
            continue
        if stop > start:
            ids.update(dict.fromkeys(names[start:stop], lid))
        lid, start, stop = run_id, a, b
    if stop > start:
        ids.update(dict.fromkeys(names[start:stop], lid))
    return ids


def layer_ids(layout: Layout, view: ModelView, recipe: str) -> LayerIds:
    """Layer ids of every parameter of the view (frozen ones included) under ``recipe``.

    Roles belong to modules, and a module's parameters are one run of the view, so each role's id is
    decided once and handed to its whole run; names outside every run (head, neck) go to the top.
    """
    names = view.names
    runs = _role_runs(layout, view)
    if runs is None:
        found = _ids_by_name(layout, names, recipe)
        return LayerIds(IdMap(found.ids, found.num_layers - 1), found.num_layers)
    if recipe == "timm":
        keys = [(a, b, _timm_key(role)) for a, b, role in runs]
        ordinal = {key: i for i, key in enumerate(sorted({k for _, _, k in keys if k != _MERGE_WITH_PREVIOUS}))}
        last = len(ordinal) - 1
        numbered = [(a, b, last if k == _MERGE_WITH_PREVIOUS else ordinal[k]) for a, b, k in keys]  # type: ignore[index]
        covered = sum(b - a for a, b, _ in numbered)
        num_layers = last + 1 + int(covered < len(names))
    else:
        rule, depths = _RULES[recipe], layout.depths
        numbered = [(a, b, lid) for a, b, role in runs if (lid := rule(role, depths)) is not None]
        covered = sum(b - a for a, b, _ in numbered)
        num_layers = max((lid for _, _, lid in numbered), default=0) + 1 + int(covered < len(names))
    ids = _assign(names, numbered)
    ids.top = num_layers - 1
    return LayerIds(ids, num_layers)
