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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

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
_DOT_TABLE = "." + _TABLE
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
# The model view's ``shapes``: one shape per parameter, aligned with its names.
Shapes = Sequence[tuple[int, ...]]


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
        aligned: Recipe -> (the layer id of every parameter of ``names``, None where no run covers it; whether
            the runs cover all), filled on first use.
    """

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    backbone: str
    stages: str
    names: tuple[str, ...] = ()
    runs: list[tuple[int, int, Role]] = field(default_factory=list)
    ids: dict[str, dict[str, int]] = field(default_factory=dict)
    aligned: dict[str, tuple[tuple[int | None, ...], bool]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def roles(self) -> dict[str, Role]:
        """Parameter name -> role (see ``runs``), in listing order."""
        aligned: list[Role | None] = [None] * len(self.names)
        for start, stop, role in self.runs:
            aligned[start:stop] = [role] * (stop - start)
        return {name: role for name, role in zip(self.names, aligned, strict=True) if role is not None}


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


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


def _marker_blocks(view: ModelView, text: str, markers: list[str]) -> dict[str, str]:
    """Block path -> container path, from the names (lines of ``text``) that contain one of ``markers``.

    ``text.split`` finds every marker in C, and a newline count per piece gives its name's position: the
    names between markers are never touched in Python. Every block of a stage names its marker alike
    (``<block>.attn.relative_position_bias_table``, ``<block>.attn.cpb_mlp.``): once one marker is parsed in
    full by :func:`_block_of_marker`, a marker with the same text after its block costs a suffix test (a
    table) or one search (an MLP), checked to give the answer the full parse would.
    """
    names, shapes = view.names, view.shapes  # the shapes, read once per plan, are what the analysis reads next
    blocks: dict[str, str] = {}
    tail, cut = "", 0  # the text after the block in the last table parsed in full (".attn.<table>"), -its length
    mid = ""  # the text between the block and the MLP's parameters in the last MLP parsed in full
    mlp = None  # the name prefix of the last MLP marker: a v2 block's MLP has several parameters, one answer
    for marker in markers:  # a name found twice (two marker texts, or one twice) is recorded twice, alike
        line = 0
        pieces = text.split(marker)
        del pieces[-1]  # the text after the last marker
        for piece in pieces:
            line += piece.count("\n")
            name = names[line]
            if name.endswith(_DOT_TABLE) and len(shapes[line]) == 2:
                if tail and name.endswith(tail):
                    # The same components, none an index, between the block and the table: the index before
                    # them is the block, when there is one.
                    block = name[:cut]
                    container, dot, index = block.rpartition(".")
                    if dot and index.isdigit():
                        blocks[block] = container
                        continue
                block, _ = _block_of_marker(name[: -len(_DOT_TABLE)], True)
                if block is not None:
                    tail = name[len(block) :]
                    cut = -len(tail)
                    blocks[block] = _parent(block)
                continue
            if mlp is not None and name.startswith(mlp):
                continue
            at = name.find(mid) if mid else -1
            if at > 0:
                # ``mid`` ends at the first MLP module on its path and holds no index: after an index, and with
                # no MLP module before it, the full parse finds the same marker, block and prefix.
                block = name[:at]
                container, dot, index = block.rpartition(".")
                if dot and index.isdigit() and _MLP_TEXT not in block:
                    blocks[block] = container
                    mlp = name[: at + len(mid)]
                    continue
            block, prefix = _block_of_marker(name.rpartition(".")[0], False)
            if prefix is not None:
                mlp = prefix
                if block is not None:
                    mid = prefix[len(block) :]
                    blocks[block] = _parent(block)
    return blocks


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


def _width(shapes: Shapes, block: range) -> int:
    """A block's channel width: the most common length among its 1-D parameters (norms, biases)."""
    lengths = [shape[0] for shape in shapes[block.start : block.stop] if len(shape) == 1]
    if not lengths:
        return 0
    if lengths.count(lengths[0]) * 2 > len(lengths):  # the usual case: the first one is most of them
        return lengths[0]
    return max(dict.fromkeys(lengths), key=lengths.count)  # ties: the first seen


def _numbered_children(view: ModelView, path: str) -> list[str]:
    """The paths of the numbered children of the module at ``path``, by index."""
    module = view.module(path)
    if module is None:
        return []
    kids = sorted((k for k, child in module._modules.items() if child is not None and k.isdigit()), key=int)
    children = map((path + ".").__add__, kids)
    if view.matches_torch_listing:  # every child is a module at its path
        return list(children)
    modules = view.modules
    return [child for child in children if child in modules]


def _is_final_norm(view: ModelView, unit: str, pieces: list[range], width: int) -> bool:
    module = view.module(unit)
    if module is not None and is_norm_module(type(module)):
        return True
    names, shapes = view.names, view.shapes
    return all(
        names[i].rpartition(".")[2] in ("weight", "bias") and shapes[i] == (width,) for piece in pieces for i in piece
    )


def _merge_stage(shapes: Shapes, pieces: list[range], reductions: dict[tuple[int, int], int]) -> int | None:
    """The stage ``k`` a PatchMerging follows, from its reduction: a 2-D weight ``[C_{k+1}, 4 * C_k]``.

    ``reductions``: that shape -> ``k`` (the first ``k`` where two pairs of stages share it).
    """
    for piece in pieces:
        for shape in shapes[piece.start : piece.stop]:
            if len(shape) == 2:
                stage = reductions.get(shape)
                if stage is not None:
                    return stage
    return None


def _hierarchies(containers: Iterable[str]) -> list[tuple[str, dict[int, str]]]:
    """(stage list, stage index -> container) for every stage list of two stages or more among ``containers``;
    of two containers filed as one stage, the first."""
    groups: dict[str, dict[int, str]] = {}
    for container in containers:
        found = _stage_list_of(container)
        if found is not None:
            groups.setdefault(found[0], {}).setdefault(found[1], container)
    # One run of windowed blocks (BEiT's relative tables) is not a hierarchy.
    return [(stage_list, stages) for stage_list, stages in groups.items() if len(stages) >= 2]


def _find_stages(view: ModelView) -> tuple[str, list[str]] | None:
    """(stage list path, block containers in running order) of the largest Swin backbone, or None."""
    text = "\n".join(view.names)
    # Two substring searches reject any model but a windowed transformer ("_mlp." is in both MLP markers).
    markers = [_TABLE] if _TABLE in text else []
    if _MLP_TEXT in text:
        markers.extend(marker for marker in _MARKER_TEXT[1:] if marker in text)
    if not markers:
        return None
    blocks = _marker_blocks(view, text, markers)
    containers = list(dict.fromkeys(blocks.values()))
    hierarchies = _hierarchies(containers)
    if not hierarchies:
        return None
    if len(hierarchies) > 1 or len(containers) > len(hierarchies[0][1]):
        # Rare (several backbones, or containers beside the stages): the choice must not hang on the order
        # the markers were found in. Of containers filed as one stage the first in the listing is the stage,
        # and of several backbones the one with the most blocks wins (the first of equals).
        containers.sort(key=lambda container: view.span(container).start)
        hierarchies = _hierarchies(containers)
        sizes = [sum(1 for c in blocks.values() if c in set(stages.values())) for _, stages in hierarchies]
        hierarchies = [hierarchies[sizes.index(max(sizes))]]
    stage_list, stages = hierarchies[0]
    return stage_list, [stages[i] for i in sorted(stages)]


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
    names, span, shapes = view.names, view.span, view.shapes

    blocks: list[tuple[int, int, int, int]] = []  # (start, -stop, stage, index) of the blocks with parameters
    depths = []
    widths = []
    for s, container in enumerate(containers):
        spans = list(map(span, _numbered_children(view, container)))
        blocks.extend((r.start, -r.stop, s, j) for j, r in enumerate(spans) if r)
        depths.append(len(spans))
        widths.append(_width(shapes, spans[0]) if spans else 0)
    depths_t, widths_t = tuple(depths), tuple(widths)

    # The backbone: the nearest module around the stage list that holds more than the stages. A module's
    # parameters are one run of the listing, and the stage list's run lies inside the backbone's.
    backbone = _parent(stage_list)
    held = len(span(stage_list))
    while backbone and len(span(backbone)) <= held:
        backbone = _parent(backbone)
    inside = span(backbone) if backbone else range(len(names))

    # Paths below the stage list that lead to a block container: a unit in the stage list is the first path
    # off them.
    on_path = set()
    for container in containers:
        path = container
        while path and path != stage_list and path not in on_path:
            on_path.add(path)
            path = _parent(path)
    depth_of_list = len(stage_list.split(".")) if stage_list else 0
    depth_of_backbone = len(backbone.split(".")) if backbone else 0
    in_list = stage_list + "." if stage_list else ""

    runs: list[tuple[int, int, Role]] = []
    if inside.start > 0:
        runs.append((0, inside.start, _TOP_ROLE))
    if inside.stop < len(names):
        runs.append((inside.stop, len(names), _TOP_ROLE))
    units: dict[str, list[range]] = {}  # unit path -> its runs, for the parameters placed by role afterwards
    unit_after: dict[str, int] = {}  # unit path -> stage of the last block before it (-1: none)

    def place(start: int, stop: int, last_stage: int) -> None:
        """Sort the parameters between blocks into units (or place the backbone's own ones).

        A unit is a module, so its parameters are one run: the first one found places the rest of the run.
        """
        i = start
        while i < stop:
            name = names[i]
            parts = name.split(".")
            whole = True  # whether every parameter under ``unit`` has this one's unit
            if name.startswith(in_list):
                unit, path = "", stage_list
                for part in parts[depth_of_list:-1]:
                    path = f"{path}.{part}" if path else part
                    if path not in on_path:
                        unit = path
                        break
                else:
                    unit, whole = _parent(name), False
            elif len(parts) == depth_of_backbone + 1:
                # The backbone's own parameters come first in any listing, so their order says nothing:
                # its absolute position embedding or mask token is stem, anything else of its own on top.
                runs.append((i, i + 1, _STEM_ROLE if _STEM_PARAMETER.fullmatch(parts[-1]) else _TOP_ROLE))
                i += 1
                continue
            else:
                unit = ".".join(parts[: depth_of_backbone + 1])
                whole = not stage_list.startswith(unit + ".")  # a module around the stage list: one by one
            end = min(span(unit).stop, stop) if whole else i + 1
            end = max(end, i + 1)
            units.setdefault(unit, []).append(range(i, end))
            unit_after.setdefault(unit, last_stage)
            i = end

    # Walk the backbone's run: blocks are whole sub-runs (the outermost block wins if two ever nest), and
    # only the few parameters between them (stem, PatchMergings, final norm, head) are looked at, by unit.
    blocks.sort()
    pos, last_stage = inside.start, -1
    for start, minus_stop, s, j in blocks:
        if start < pos:
            continue
        if start > pos:
            place(pos, start, last_stage)
        runs.append((start, -minus_stop, (BLOCK, s, j)))
        last_stage, pos = s, -minus_stop
    place(pos, inside.stop, last_stage)

    reductions: dict[tuple[int, int], int] = {}
    for k in range(len(widths_t) - 1):
        reductions.setdefault((widths_t[k + 1], 4 * widths_t[k]), k)
    merges = {unit: _merge_stage(shapes, pieces, reductions) for unit, pieces in units.items()}
    if all(merge is None for merge in merges.values()):
        return None  # stages without a PatchMerging between them: not a Swin
    last = len(depths_t) - 1
    for unit, pieces in units.items():
        after = unit_after[unit]
        in_stages = unit.startswith(in_list)
        merge = merges[unit] if in_stages else None
        if merge is not None:
            role: Role = (MERGE, merge, 0)
        elif after < 0:
            role = _STEM_ROLE
        elif after < last and in_stages:
            role = (MERGE, after, 0)
        elif _is_final_norm(view, unit, pieces, widths_t[-1]):
            role = (FINAL_NORM, 0, 0)
        else:
            role = _TOP_ROLE
        runs += [(piece.start, piece.stop, role) for piece in pieces]
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


def _aligned_ids(layout: SwinLayout, recipe: str) -> tuple[tuple[int | None, ...], bool]:
    """(layer id of every parameter of ``layout.names`` under ``recipe``, None where no run covers it; whether
    the runs cover every parameter), memoized in the layout."""
    found = layout.aligned.get(recipe)
    if found is not None:
        return found
    role_id = _role_ids(layout, recipe)
    starts = [sum(layout.depths[:s]) for s in range(len(layout.depths) + 1)]
    aligned: list[int | None] = [None] * len(layout.names)
    covered = 0
    for start, stop, role in layout.runs:
        # A block's id is the same in both recipes: computed here, without a call, for most of the runs.
        aligned[start:stop] = [starts[role[1]] + role[2] + 1 if role[0] == BLOCK else role_id(role)] * (stop - start)
        covered += stop - start
    # The runs cover every parameter once, unless a layout was built by hand.
    found = layout.aligned[recipe] = (tuple(aligned), covered == len(aligned))
    return found


def layer_ids(layout: SwinLayout, recipe: str) -> dict[str, int]:
    """Parameter name -> layer id under ``recipe`` (``"simmim"`` or ``"timm"``), memoized in the layout."""
    if recipe in layout.ids:
        return layout.ids[recipe]
    aligned, complete = _aligned_ids(layout, recipe)
    if complete:
        ids = dict(zip(layout.names, aligned, strict=True))
    else:
        ids = {name: i for name, i in zip(layout.names, aligned, strict=True) if i is not None}
    layout.ids[recipe] = ids
    return ids


def _num_layers(layout: SwinLayout, recipe: str) -> int:
    if recipe != "timm":
        return sum(layout.depths) + 2
    # The largest id given, plus one (the ids are memoized: the layer_id hook asks for them next).
    aligned, complete = _aligned_ids(layout, recipe)
    return max(aligned if complete else (i for i in aligned if i is not None), default=0) + 1


@hookimpl
def layerdecay_num_layers(model: ModelView, recipe: str | None) -> int | None:
    """Claim Swin v1/v2 backbones: ``sum(depths) + 2`` ids (timm: ``+ 1`` when there is no head)."""
    layout = analyse(model)
    if layout is None:
        return None
    return _num_layers(layout, select_recipe(recipe, RECIPES, owner=_OWNER))


@hookimpl
def layerdecay_layer_id(model: ModelView, recipe: str | None, num_layers: int) -> tuple[int, ...] | None:
    """Layer ids by role (see the module docstring), aligned with ``model.names``: the core then calls nothing
    per parameter. Parameters the analysis did not see go on top."""
    layout = analyse(model)
    if layout is None:
        return None
    aligned, complete = _aligned_ids(layout, select_recipe(recipe, RECIPES, owner=_OWNER))
    if complete:
        return cast(tuple[int, ...], aligned)  # every id is set
    top = num_layers - 1
    return tuple(top if i is None else i for i in aligned)
