"""layerdecay plugin for Swin Transformer v1 and v2, as timm, torchvision, transformers and the original repo build it.

The four libraries file the same network under different names: timm and the original repo use
``layers.S.blocks.B``, torchvision ``features.(2S+1).B``, transformers ``swin.encoder.layers.S.blocks.B``;
and the PatchMerging module that joins stage ``k`` to stage ``k+1`` sits at the start of stage ``k+1``
(timm), at the end of stage ``k`` (original repo, transformers) or at its own index (torchvision). So
this plugin reads the model's structure instead of its names:

* a block is the numbered module that holds a window attention, recognized by its
  ``relative_position_bias_table`` (v1) or its continuous position bias MLP (v2);
* the containers of blocks are the stages, ordered by their index, and their depths are counted;
* every other module inside the stage list is placed by its role: a linear layer taking ``4 * C_k``
  features to ``C_{k+1}`` is the PatchMerging after stage ``k``, whatever stage it is filed under; a module
  without such a signature is placed by where it runs (before the first block, between two stages, or
  after the last one);
* the backbone is the smallest module around the stage list that holds more than the stages (the patch
  embedding); what runs before the stages there is the stem (with the backbone's own mask token or
  absolute position embedding), a norm after them is the final norm, and everything outside the backbone
  (heads, necks, a user's wrapper) belongs to the top layer.

Recipes (``recipe=``):

* ``"simmim"`` (default), SimMIM's ``get_swin_layer``: stem 0, block ``j`` of stage ``i`` ->
  ``sum(depths[:i]) + j + 1``, the PatchMerging after stage ``i`` -> ``sum(depths[:i+1])`` (with the last
  block of stage ``i``), final norm and head -> ``sum(depths) + 1``.
* ``"timm"``, timm's ``param_groups_layer_decay`` through ``group_matcher()``: stem 0, one id per block,
  the PatchMerging with the first block of the stage it opens, the final norm with the last block, the
  head on top (no top layer when the model has no head).

Weight decay is left to the core's defaults, which already exclude what both recipes exclude (norms,
biases, relative position tables, the v2 ``cpb_mlp`` and ``logit_scale``, absolute position embeddings).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from layerdecay import ModelView, hookimpl, is_norm_module, select_recipe

__all__ = [
    "PLUGIN_NAME",
    "RECIPES",
    "SwinLayout",
    "analyse",
    "layer_ids",
    "layerdecay_layer_id",
    "layerdecay_num_layers",
]

PLUGIN_NAME = "swin"
RECIPES = ("simmim", "timm")
_OWNER = "the swin plugin"

# Parameter and module names that mark a Swin window attention (v1 table, v2 continuous position bias MLP).
_TABLE = "relative_position_bias_table"
_CPB_MODULES = frozenset({"cpb_mlp", "continuous_position_bias_mlp"})
# Text that every marker's name contains: a model whose names hold none of it is rejected without analysis.
_MARKER_TEXT = (_TABLE, *(module + "." for module in sorted(_CPB_MODULES)))
_MLP_TEXT = "_mlp."
# How far above the marker the block's index may sit: ``B.attn.table`` (timm, torchvision, original),
# ``B.attention.self.table`` (transformers 4), ``B.attention.relative_position_bias.table`` (transformers 5).
_MAX_MARKER_DEPTH = 3
# A stage module named with its index (timm's ``features_only`` models flatten ``layers.1`` to ``layers_1``).
_FLAT_STAGE = re.compile(r".*\D_(\d+)")
# Parameters of the backbone module itself that belong to the stem wherever they are registered.
_STEM_PARAMETER = re.compile(r"(.*_)?tokens?|.*pos(ition)?_embed(ding)?s?")

# Roles of a parameter in the backbone.
STEM = "stem"
BLOCK = "block"
MERGE = "merge"
FINAL_NORM = "final norm"
TOP = "top"

Role = tuple[str, int, int]
_TOP_ROLE: Role = (TOP, 0, 0)
_STEM_ROLE: Role = (STEM, 0, 0)


@dataclass
class SwinLayout:
    """What the analysis found: stage depths and the role of every parameter (frozen ones included).

    Roles are kept as runs of consecutive parameters (a block's parameters are one run of the listing), so
    that planning costs a few slices per block rather than work per parameter.

    Attributes:
        depths: Blocks per stage, in running order.
        widths: Channel width of each stage.
        backbone: Path of the backbone module ('' when the model is the backbone).
        stages: Path of the module that holds the stages.
        names: The parameter names the runs index (the model view's ``names``).
        runs: ``(start, stop, role)`` over positions in ``names``, together covering every parameter once.
            A role is ``("block", s, j)``, ``("merge", k, 0)`` for the PatchMerging after stage ``k``, or
            ``(role, 0, 0)`` for stem, final norm and top.
        ids: Recipe -> (parameter name -> layer id), filled on first use.
    """

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    backbone: str
    stages: str
    names: tuple[str, ...] = ()
    runs: list[tuple[int, int, Role]] = field(default_factory=list)
    ids: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def roles(self) -> dict[str, Role]:
        """Parameter name -> role (see ``runs``), in listing order."""
        aligned: list[Role | None] = [None] * len(self.names)
        for start, stop, role in self.runs:
            aligned[start:stop] = [role] * (stop - start)
        return {name: role for name, role in zip(self.names, aligned, strict=True) if role is not None}


class _IdTable(dict[str, int]):
    """Name -> layer id whose lookups of unknown names answer the top id: one C-level lookup per name."""

    __slots__ = ("top",)

    def __init__(self, ids: dict[str, int], top: int) -> None:
        super().__init__(ids)
        self.top = top

    def __missing__(self, key: str) -> int:
        return self.top


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _under(name: str, prefix: str) -> bool:
    return not prefix or name.startswith(prefix + ".")


def _block_of_marker(path: str, table: bool) -> tuple[str | None, str | None]:
    """The path of the block that holds a window attention, from its marker's module path (or None).

    ``table``: the marker is a 2-D ``relative_position_bias_table`` of the module at ``path``; otherwise the
    marker is the first position-bias MLP module on ``path``. Also returns, for an MLP marker, the name prefix
    up to it (``"...cpb_mlp."``): every other parameter under that prefix, a table aside, has the same answer.
    """
    parts = path.split(".") if path else []
    if table:
        marker = len(parts)
    else:
        for marker, part in enumerate(parts):  # noqa: B007 (the loop finds ``marker``)
            if part in _CPB_MODULES:
                break
        else:
            return None, None
    for i in range(marker - 1, max(marker - 1 - _MAX_MARKER_DEPTH, 0), -1):
        if parts[i].isdigit():
            block = ".".join(parts[: i + 1])
            break
    else:
        block = None
    return block, None if table else ".".join(parts[: marker + 1]) + "."


def _marker_candidates(text: str, markers: list[str]) -> list[int]:
    """Positions (line numbers of ``text``, one name a line) of the names that contain one of ``markers``."""
    found = set()
    for marker in markers:
        pos = text.find(marker)
        line, counted = 0, 0
        while pos >= 0:
            line += text.count("\n", counted, pos)
            counted = pos
            found.add(line)
            end = text.find("\n", pos)
            if end < 0:
                break
            pos = text.find(marker, end)
    return sorted(found)


def _stage_list_of(container: str) -> tuple[str, int] | None:
    """(path of the stage list, stage index) for a container of blocks, or None when it is not in one.

    ``features.3`` -> (``features``, 3) (torchvision: the stage is the container); ``layers.1.blocks`` ->
    (``layers``, 1) (the stage module holds the container); ``layers_1.blocks`` -> ('', 1).
    """
    head, _, last = container.rpartition(".")
    if last.isdigit():
        return (head, int(last)) if head else None
    grand, _, index = head.rpartition(".")
    if head and index.isdigit() and grand:
        return grand, int(index)
    flat = _FLAT_STAGE.fullmatch(index) if head else None
    if flat is not None:  # timm features_only: the stages are the root's ``layers_0`` .. ``layers_3``
        return grand, int(flat[1])
    return None


def _width(view: ModelView, block: str) -> int:
    """A block's channel width: the most common length among its 1-D parameters (norms, biases)."""
    span = view.span(block)
    counts: dict[int, int] = {}
    for param in view.params[span.start : span.stop]:
        if param.ndim == 1:
            length = param.shape[0]
            counts[length] = counts.get(length, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else 0  # ties: the first seen


def _numbered_children(view: ModelView, path: str) -> list[str]:
    module = view.module(path)
    if module is None:
        return []
    prefix = path + "."
    modules = view.modules
    return sorted((k for k in module._modules if k.isdigit() and prefix + k in modules), key=int)


def _is_final_norm(view: ModelView, unit: str, positions: list[int], width: int) -> bool:
    module = view.module(unit)
    if module is not None and is_norm_module(type(module)):
        return True
    names, params = view.names, view.params
    return all(names[i].rpartition(".")[2] in ("weight", "bias") for i in positions) and all(
        tuple(params[i].shape) == (width,) for i in positions
    )


def _merge_stage(view: ModelView, positions: Iterable[int], widths: tuple[int, ...]) -> int | None:
    """The stage ``k`` a PatchMerging follows, from its reduction: a 2-D weight ``[C_{k+1}, 4 * C_k]``."""
    params = view.params
    for i in positions:
        shape = params[i].shape
        if len(shape) != 2:
            continue
        for k in range(len(widths) - 1):
            if shape[1] == 4 * widths[k] and shape[0] == widths[k + 1]:
                return k
    return None


def _find_stages(view: ModelView) -> tuple[str, list[str]] | None:
    """(stage list path, block containers in running order) of the largest Swin backbone, or None."""
    names = view.names
    text = "\n".join(names)
    # Two substring searches reject any model but a windowed transformer ("_mlp." is in both MLP markers).
    markers = [_TABLE] if _TABLE in text else []
    if _MLP_TEXT in text:
        markers.extend(marker for marker in _MARKER_TEXT[1:] if marker in text)
    if not markers:
        return None
    params = view.params
    blocks: dict[str, str] = {}  # block path -> container path
    mlp = None  # the name prefix of the last MLP marker: a v2 block's MLP has several parameters, one answer
    for i in _marker_candidates(text, markers):
        name = names[i]
        path, _, last = name.rpartition(".")
        table = last == _TABLE and params[i].ndim == 2
        if not table and mlp is not None and name.startswith(mlp):
            continue
        block, prefix = _block_of_marker(path, table)
        if prefix is not None:
            mlp = prefix
        if block is not None:
            blocks.setdefault(block, _parent(block))
    groups: dict[str, dict[int, str]] = {}
    for container in set(blocks.values()):
        found = _stage_list_of(container)
        if found is not None:
            groups.setdefault(found[0], {})[found[1]] = container
    best = None
    for stage_list, containers in groups.items():
        if len(containers) < 2:
            continue  # one run of windowed blocks (BEiT's relative tables) is not a hierarchy
        size = sum(1 for c in blocks.values() if c in containers.values())
        if best is None or size > best[0]:
            best = (size, stage_list, [containers[i] for i in sorted(containers)])
    return None if best is None else (best[1], best[2])


def analyse(view: ModelView) -> SwinLayout | None:
    """The Swin layout of ``view``'s model, memoized in ``view.cache``; None when the model is not a Swin."""
    cache = view.cache
    if PLUGIN_NAME not in cache:
        cache[PLUGIN_NAME] = _analyse(view)
    return cache[PLUGIN_NAME]


def _analyse(view: ModelView) -> SwinLayout | None:
    found = _find_stages(view)
    if found is None:
        return None
    stage_list, containers = found

    block_index: dict[str, tuple[int, int]] = {}
    depths = []
    widths = []
    for s, container in enumerate(containers):
        kids = _numbered_children(view, container)
        for j, kid in enumerate(kids):
            block_index[f"{container}.{kid}"] = (s, j)
        depths.append(len(kids))
        widths.append(_width(view, f"{container}.{kids[0]}") if kids else 0)
    depths_t, widths_t = tuple(depths), tuple(widths)

    # The backbone: the nearest module around the stage list that holds more than the stages. A module's
    # parameters are one run of the listing, and the stage list's run lies inside the backbone's.
    names = view.names
    backbone = _parent(stage_list)
    held = len(view.span(stage_list))
    while backbone and len(view.span(backbone)) <= held:
        backbone = _parent(backbone)
    inside = view.span(backbone) if backbone else range(len(names))

    # Paths that lead to a block container: a unit in the stage list is the first path off them.
    on_path = set()
    for container in containers:
        parts = container.split(".")
        on_path.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    depth_of_list = len(stage_list.split(".")) if stage_list else 0
    depth_of_backbone = len(backbone.split(".")) if backbone else 0

    runs: list[tuple[int, int, Role]] = []
    if inside.start > 0:
        runs.append((0, inside.start, _TOP_ROLE))
    if inside.stop < len(names):
        runs.append((inside.stop, len(names), _TOP_ROLE))
    units: dict[str, list[int]] = {}  # unit path -> positions, for the parameters placed by role afterwards
    unit_after: dict[str, int] = {}  # unit path -> stage of the last block before it (-1: none)

    def place(start: int, stop: int, last_stage: int) -> None:
        """Sort the parameters between blocks into units (or place the backbone's own ones)."""
        for i in range(start, stop):
            name = names[i]
            parts = name.split(".")
            if _under(name, stage_list):
                unit = next(
                    (".".join(parts[:k]) for k in range(depth_of_list + 1, len(parts))
                     if ".".join(parts[:k]) not in on_path),
                    _parent(name),
                )
            else:
                rest = parts[depth_of_backbone:]
                if len(rest) == 1:
                    # The backbone's own parameters come first in any listing, so their order says nothing:
                    # its absolute position embedding or mask token is stem, anything else of its own on top.
                    runs.append((i, i + 1, _STEM_ROLE if _STEM_PARAMETER.fullmatch(rest[0]) else _TOP_ROLE))
                    continue
                unit = ".".join(parts[: depth_of_backbone + 1])
            units.setdefault(unit, []).append(i)
            unit_after.setdefault(unit, last_stage)

    # Walk the backbone's run: blocks are whole sub-runs (the outermost block wins if two ever nest), and
    # only the few parameters between them (stem, PatchMergings, final norm, head) are looked at one by one.
    spans = []
    for path, (s, j) in block_index.items():
        span = view.span(path)
        if span:
            spans.append((span.start, -span.stop, s, j))
    spans.sort()
    pos, last_stage = inside.start, -1
    for start, minus_stop, s, j in spans:
        if start < pos:
            continue
        if start > pos:
            place(pos, start, last_stage)
        runs.append((start, -minus_stop, (BLOCK, s, j)))
        last_stage, pos = s, -minus_stop
    place(pos, inside.stop, last_stage)

    merges = {unit: _merge_stage(view, positions, widths_t) for unit, positions in units.items()}
    if all(merge is None for merge in merges.values()):
        return None  # stages without a PatchMerging between them: not a Swin
    last = len(depths_t) - 1
    for unit, positions in units.items():
        after = unit_after[unit]
        in_stages = _under(unit, stage_list)
        merge = merges[unit] if in_stages else None
        if merge is not None:
            role: Role = (MERGE, merge, 0)
        elif after < 0:
            role = _STEM_ROLE
        elif after < last and in_stages:
            role = (MERGE, after, 0)
        elif _is_final_norm(view, unit, positions, widths_t[-1]):
            role = (FINAL_NORM, 0, 0)
        else:
            role = _TOP_ROLE
        runs.extend((i, i + 1, role) for i in positions)
    return SwinLayout(depths_t, widths_t, backbone, stage_list, names, runs)


def _role_ids(layout: SwinLayout, recipe: str) -> Callable[[Role], int]:
    """The layer id of a role under ``recipe``."""
    starts = [sum(layout.depths[:s]) for s in range(len(layout.depths) + 1)]
    total = starts[-1]
    simmim = recipe == "simmim"
    has_top = simmim or any(role[0] == TOP for _, _, role in layout.runs)  # short-circuits for simmim
    top = total + 1 if has_top else total

    def role_id(role: Role) -> int:
        kind, stage, block = role
        if kind == BLOCK:
            return starts[stage] + block + 1
        if kind == STEM:
            return 0
        if kind == MERGE:
            # SimMIM: with the last block of the stage it closes; timm: with the first block it opens.
            return starts[stage + 1] if simmim else starts[stage + 1] + 1
        if kind == FINAL_NORM:
            return top if simmim else total
        return top

    return role_id


def layer_ids(layout: SwinLayout, recipe: str) -> dict[str, int]:
    """Parameter name -> layer id under ``recipe`` (``"simmim"`` or ``"timm"``), memoized in the layout."""
    if recipe in layout.ids:
        return layout.ids[recipe]
    role_id = _role_ids(layout, recipe)
    aligned: list[int | None] = [None] * len(layout.names)
    covered = 0
    for start, stop, role in layout.runs:
        aligned[start:stop] = [role_id(role)] * (stop - start)
        covered += stop - start
    if covered == len(aligned):  # the runs cover every parameter once (a layout built by hand may not)
        ids = dict(zip(layout.names, aligned, strict=True))
    else:
        ids = {name: i for name, i in zip(layout.names, aligned, strict=True) if i is not None}
    layout.ids[recipe] = ids
    return ids


def _num_layers(layout: SwinLayout, recipe: str) -> int:
    if recipe != "timm":
        return sum(layout.depths) + 2
    role_id = _role_ids(layout, recipe)
    return max((role_id(role) for start, stop, role in layout.runs if stop > start), default=0) + 1


@hookimpl
def layerdecay_num_layers(model: ModelView, recipe: str | None) -> int | None:
    """Claim Swin v1/v2 backbones: ``sum(depths) + 2`` ids (timm: ``+ 1`` when there is no head)."""
    layout = analyse(model)
    if layout is None:
        return None
    return _num_layers(layout, select_recipe(recipe, RECIPES, owner=_OWNER))


@hookimpl
def layerdecay_layer_id(model: ModelView, recipe: str | None, num_layers: int) -> Callable[[str], int] | None:
    """Layer ids by role (see the module docstring); parameters the analysis did not see go on top."""
    layout = analyse(model)
    if layout is None:
        return None
    ids = layer_ids(layout, select_recipe(recipe, RECIPES, owner=_OWNER))
    return _IdTable(ids, num_layers - 1).__getitem__
