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
from collections import Counter
from collections.abc import Callable
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


@dataclass
class SwinLayout:
    """What the analysis found: stage depths and the role of every parameter (frozen ones included).

    Attributes:
        depths: Blocks per stage, in running order.
        widths: Channel width of each stage.
        backbone: Path of the backbone module ('' when the model is the backbone).
        stages: Path of the module that holds the stages.
        roles: Parameter name -> (role, stage, block): ``("block", s, j)``, ``("merge", k, 0)`` for the
            PatchMerging after stage ``k``, or ``(role, 0, 0)`` for stem, final norm and top.
        ids: Recipe -> (parameter name -> layer id), filled on first use.
    """

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    backbone: str
    stages: str
    roles: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    ids: dict[str, dict[str, int]] = field(default_factory=dict)


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _under(name: str, prefix: str) -> bool:
    return not prefix or name.startswith(prefix + ".")


def _block_of_marker(name: str, ndim: int) -> str | None:
    """The path of the block that holds the window attention marked by parameter ``name``, or None."""
    parts = name.split(".")
    if parts[-1] == _TABLE and ndim == 2:
        marker = len(parts) - 1
    else:
        marker = next((i for i, p in enumerate(parts[:-1]) if p in _CPB_MODULES), -1)
        if marker < 0:
            return None
    for i in range(marker - 1, max(marker - 1 - _MAX_MARKER_DEPTH, 0), -1):
        if parts[i].isdigit():
            return ".".join(parts[: i + 1])
    return None


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
    lengths = Counter(
        p.shape[0] for n, p in zip(view.names, view.params, strict=True) if _under(n, block) and p.ndim == 1
    )
    return lengths.most_common(1)[0][0] if lengths else 0


def _numbered_children(view: ModelView, path: str) -> list[str]:
    prefix = path + "."
    kids = [p[len(prefix):] for p in view.modules if p.startswith(prefix)]
    return sorted({k for k in kids if k.isdigit()}, key=int)


def _is_final_norm(view: ModelView, unit: str, names: list[str], width: int) -> bool:
    module = view.module(unit)
    if module is not None and is_norm_module(type(module)):
        return True
    shapes = [view.shape(n) for n in names]
    return all(n.rpartition(".")[2] in ("weight", "bias") for n in names) and all(s == (width,) for s in shapes)


def _merge_stage(view: ModelView, names: list[str], widths: tuple[int, ...]) -> int | None:
    """The stage ``k`` a PatchMerging follows, from its reduction: a 2-D weight ``[C_{k+1}, 4 * C_k]``."""
    for name in names:
        shape = view.shape(name)
        if len(shape) != 2:
            continue
        for k in range(len(widths) - 1):
            if shape[1] == 4 * widths[k] and shape[0] == widths[k + 1]:
                return k
    return None


def _find_stages(view: ModelView) -> tuple[str, list[str]] | None:
    """(stage list path, block containers in running order) of the largest Swin backbone, or None."""
    blocks: dict[str, str] = {}  # block path -> container path
    for name, param in zip(view.names, view.params, strict=True):
        block = _block_of_marker(name, param.ndim)
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
    if PLUGIN_NAME not in view.cache:
        view.cache[PLUGIN_NAME] = _analyse(view)
    return view.cache[PLUGIN_NAME]


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

    # The backbone: the nearest module around the stage list that holds more than the stages.
    names = view.names
    backbone = _parent(stage_list)
    while backbone and not any(_under(n, backbone) and not _under(n, stage_list) for n in names):
        backbone = _parent(backbone)

    # Paths that lead to a block container: a unit in the stage list is the first path off them.
    on_path = set()
    for container in containers:
        parts = container.split(".")
        on_path.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    depth_of_list = len(stage_list.split(".")) if stage_list else 0

    roles: dict[str, tuple[str, int, int]] = {}
    units: dict[str, list[str]] = {}  # unit path -> names, for the parameters placed by role afterwards
    unit_after: dict[str, int] = {}  # unit path -> stage of the last block before it (-1: none)
    last_stage = -1
    for name in names:
        if not _under(name, backbone):
            roles[name] = (TOP, 0, 0)
            continue
        parts = name.split(".")
        if _under(name, stage_list):
            hit = None
            for i in range(depth_of_list + 1, len(parts)):
                hit = block_index.get(".".join(parts[:i]))
                if hit is not None:
                    break
            if hit is not None:
                roles[name] = (BLOCK, hit[0], hit[1])
                last_stage = hit[0]
                continue
            unit = next(
                (".".join(parts[:i]) for i in range(depth_of_list + 1, len(parts))
                 if ".".join(parts[:i]) not in on_path),
                _parent(name),
            )
        else:
            rest = parts[len(backbone.split(".")) if backbone else 0 :]
            if len(rest) == 1:
                # The backbone's own parameters come first in any listing, so their order says nothing: its
                # absolute position embedding or mask token is stem, anything else of its own goes on top.
                roles[name] = (STEM, 0, 0) if _STEM_PARAMETER.fullmatch(rest[0]) else (TOP, 0, 0)
                continue
            unit = ".".join(parts[: len(parts) - len(rest) + 1])
        units.setdefault(unit, []).append(name)
        unit_after.setdefault(unit, last_stage)

    if not any(_merge_stage(view, unit_names, widths_t) is not None for unit_names in units.values()):
        return None  # stages without a PatchMerging between them: not a Swin
    last = len(depths_t) - 1
    for unit, unit_names in units.items():
        after = unit_after[unit]
        merge = _merge_stage(view, unit_names, widths_t) if _under(unit, stage_list) else None
        if merge is not None:
            role = (MERGE, merge, 0)
        elif after < 0:
            role = (STEM, 0, 0)
        elif after < last and _under(unit, stage_list):
            role = (MERGE, after, 0)
        elif _is_final_norm(view, unit, unit_names, widths_t[-1]):
            role = (FINAL_NORM, 0, 0)
        else:
            role = (TOP, 0, 0)
        for name in unit_names:
            roles[name] = role
    return SwinLayout(depths_t, widths_t, backbone, stage_list, roles)


def layer_ids(layout: SwinLayout, recipe: str) -> dict[str, int]:
    """Parameter name -> layer id under ``recipe`` (``"simmim"`` or ``"timm"``), memoized in the layout."""
    if recipe in layout.ids:
        return layout.ids[recipe]
    starts = [sum(layout.depths[:s]) for s in range(len(layout.depths) + 1)]
    total = starts[-1]
    simmim = recipe == "simmim"
    has_top = simmim or any(role[0] == TOP for role in layout.roles.values())
    top = total + 1 if has_top else total
    ids = {}
    for name, (role, stage, block) in layout.roles.items():
        if role == BLOCK:
            ids[name] = starts[stage] + block + 1
        elif role == STEM:
            ids[name] = 0
        elif role == MERGE:
            # SimMIM: with the last block of the stage it closes; timm: with the first block it opens.
            ids[name] = starts[stage + 1] if simmim else starts[stage + 1] + 1
        elif role == FINAL_NORM:
            ids[name] = top if simmim else total
        else:
            ids[name] = top
    layout.ids[recipe] = ids
    return ids


def _num_layers(layout: SwinLayout, recipe: str) -> int:
    return max(layer_ids(layout, recipe).values(), default=0) + 1 if recipe == "timm" else sum(layout.depths) + 2


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
    top = num_layers - 1
    return lambda name: ids.get(name, top)
