"""The ConvNeXt recipes: a role (stem, downsample, block, norm_pre) -> layer id, for any depth.

Each recipe works on roles, never on a library's spelling, so the same configuration gets the same id for
the same module in timm, torchvision, transformers and the research repo. Parameters without a role
(final norm, head, a detector's neck) go to the top id. When nothing is left outside the backbone (a bare
feature extractor) there is no separate top, so no layer id is ever empty.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass

from layerdecay import ModelView
from layerdecay_convnext._layout import NORM_PRE, Layout, Role

__all__ = ["RECIPES", "LayerIds", "layer_ids"]

# The first one is the default: the ConvNeXt paper's published recipe.
RECIPES = ("official", "block", "stage", "timm")

# timm sorts parameters by a key tuple (group ordinal, stage, block); norm_pre's key marks "same group as
# the previous key". Outside parameters (head) sort last.
_MERGE_WITH_PREVIOUS = "merge"


@dataclass(frozen=True)
class LayerIds:
    """The layer ids of the parameters with a role, as runs ``(start, stop, id)`` of the view (the others,
    head and neck, are at the top), and the number of ids."""

    runs: list[tuple[int, int, int]]
    num_layers: int

    def aligned(self, count: int, top: int) -> list[int]:
        """The id of each of the view's ``count`` parameters, ``top`` for the top: one C-level fill per run."""
        ids = [top] * count
        for start, stop, lid in self.runs:
            ids[start:stop] = [lid] * (stop - start)
        return ids


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


def _timm_ids(layout: Layout, names: tuple[str, ...]) -> tuple[dict[str, int], int]:
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
    return ids, last + 1 + int(outside)


# Each rule is a pure function of (role, depths): worked out once per process for each role of a few
# configurations, rather than once per block of every plan.
_RULES = {name: functools.lru_cache(maxsize=4096)(rule)
          for name, rule in (("official", _official), ("block", _block), ("stage", _stage))}


def _ids_by_name(layout: Layout, names: tuple[str, ...], recipe: str) -> tuple[dict[str, int], int]:
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
    return ids, backbone_top + 1 + int(outside)


def _role_runs(
    layout: Layout, view: ModelView, spans: dict[str, range] | None = None
) -> list[tuple[int, int, Role]] | None:
    """The parameters of each role as one run ``(start, stop, role)`` of the view, in order; None when two
    roles' modules nest (then a parameter's role is its nearest ancestor's, decided name by name).

    ``spans`` gives the span of every role's module when the caller read them already.
    """
    span_of = view.span if spans is None else spans.__getitem__
    runs = [(span.start, span.stop, role) for path, role in layout.roles.items() if (span := span_of(path))]
    runs.sort(key=_FIRST)
    starts = list(map(_FIRST, runs))
    stops = list(map(_SECOND, runs))
    if any(map(operator.lt, starts[1:], stops)):
        return None
    return runs


def layer_ids(layout: Layout, view: ModelView, recipe: str, spans: dict[str, range] | None = None) -> LayerIds:
    """Layer ids of every parameter of the view (frozen ones included) under ``recipe``.

    Roles belong to modules, and a module's parameters are one run of the view, so each role's id is
    decided once and handed to its whole run; names outside every run (head, neck) go to the top.
    ``spans``: the span of every role's module, when the caller has them (see ``find_layout_and_spans``).
    """
    names = view.names
    runs = _role_runs(layout, view, spans)
    if runs is None:
        ids, num_layers = _ids_by_name(layout, names, recipe)
        return LayerIds([(i, i + 1, lid) for i, name in enumerate(names) if (lid := ids.get(name)) is not None],
                        num_layers)
    if recipe == "timm":
        keys = [(a, b, _timm_key(role)) for a, b, role in runs]
        ordinal = {key: i for i, key in enumerate(sorted({k for _, _, k in keys if k != _MERGE_WITH_PREVIOUS}))}
        last = len(ordinal) - 1
        numbered = [(a, b, last if k == _MERGE_WITH_PREVIOUS else ordinal[k]) for a, b, k in keys]  # type: ignore[index]
        num_layers = last + 1 + int(_covered(numbered) < len(names))
    else:
        rule, depths = _RULES[recipe], layout.depths
        numbered = [(a, b, lid) for a, b, role in runs if (lid := rule(role, depths)) is not None]
        backbone_top = max(map(_THIRD, numbered), default=0)
        num_layers = backbone_top + 1 + int(_covered(numbered) < len(names))
    return LayerIds(numbered, num_layers)


_FIRST, _SECOND, _THIRD = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2)


def _covered(runs: list[tuple[int, int, int]]) -> int:
    """How many parameters the (disjoint) runs hold, summed at C level."""
    return sum(map(_SECOND, runs)) - sum(map(_FIRST, runs))
