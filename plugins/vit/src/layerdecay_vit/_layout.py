"""Structural recognition of a plain (isotropic) vision transformer inside any model.

A ViT is found by what it is made of, not by what it is called, so one analysis covers timm, the research
repos (MAE, DeiT, BEiT), torchvision and both transformers spellings, bare or nested in a detector:

1. The *block stack*: the ``nn.ModuleList``/``nn.Sequential`` of identical blocks (same class, same
   parameter names and shapes, at least four matrices each) that holds the most parameters. Its residual
   width ``D`` is the most common size among the blocks' vectors.
2. The *patch embedding*: a 4-D weight ``[D, C, p, p]`` outside the stack. The deepest module that holds
   both it and the stack is the backbone's root, so a detector's neck or a wrapper stays outside.
3. A *sequence parameter* in the backbone: a ``[1, n, D]`` class/distillation/register token or absolute
   position embedding (OpenCLIP's free-standing ``[D]`` / ``[n, D]`` ones count too).

Hierarchical models fail one of these: Swin's and ConvNeXt's largest stack (stage 3 of 4) is wider than
their stem and has no ``[1, n, D]`` token; text encoders (BERT) have no 4-D patch weight.

Every parameter then gets a *role` that every recipe maps to a layer id: ``stem`` (tokens, position
embeddings, patch embedding and any layer registered before the blocks, e.g. CLIP's ``norm_pre``), ``block``
(with its position in the stack, whatever the child is called: ``11`` or ``encoder_layer_11``),
``shared_rel_pos`` (BEiT's relative-position bias shared by all blocks), ``final_norm`` (the norm right
after the blocks: timm ``norm``, torchvision ``encoder.ln``, HF ``layernorm``; never the pooled
``fc_norm``) and ``top`` (heads, ``fc_norm``, poolers, attention-pool heads, OpenCLIP's ``proj``, and everything
outside the backbone).

Cost: every plugin is asked about every model, so the analysis reads the view's flat lists rather than
walking module subtrees. Parameters are listed depth first, so the parameters under a module are one slice
(``ModelView.span``): comparing blocks, counting their weights and giving a whole block its id are slice
operations, and comparing all blocks at once is one comparison of two overlapping slices. Shapes come from
``ModelView.shapes``, read once per plan for every plugin. A model is turned away before any of that when
none of its tokens could be a sequence parameter (see :func:`may_be_vit`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, compress
from math import prod
from operator import itemgetter
from typing import NamedTuple

import torch
from torch import nn

from layerdecay import ModelView, is_norm_module

__all__ = ["BLOCK", "FINAL_NORM", "SHARED_REL_POS", "STEM", "TOP", "ViTLayout", "find_layout", "may_be_vit"]

STEM = "stem"
BLOCK = "block"
SHARED_REL_POS = "shared_rel_pos"
FINAL_NORM = "final_norm"
TOP = "top"

# A block of a transformer has at least attention in/out and MLP in/out matrices.
_MIN_BLOCK_MATRICES = 4
# Name fragments of a relative-position bias; outside the blocks it is BEiT's shared one.
_REL_POS_MARKERS = ("rel_pos", "relative_position", "position_bias")
_CONTAINER_TYPES = (nn.ModuleList, nn.Sequential)

_DIGITS = b"0123456789"
# The local names of a layer's own parameters: never a token or a position table.
_LAYER_PARAMS = frozenset({"weight", "bias"})


@dataclass(frozen=True)
class ViTLayout:
    """Where the backbone is and what each parameter is.

    Attributes:
        root: Path of the backbone's root module ('' for the model itself).
        stack: Path of the block container.
        depth: Number of blocks.
        width: Residual width ``D``.
        names: The view's parameter names.
        blocks: For each block in order, the positions of its parameters in ``names``.
        others: Normalized name -> role for every parameter outside the blocks, frozen included, in listing
            order (those before the blocks, then those after).
    """

    root: str
    stack: str
    depth: int
    width: int
    names: tuple[str, ...] = field(repr=False)
    blocks: tuple[range, ...] = field(repr=False)
    others: dict[str, str] = field(repr=False)

    @property
    def roles(self) -> dict[str, tuple[str, int]]:
        """Normalized parameter name -> (role, block index or -1), for every parameter."""
        roles = {name: (role, -1) for name, role in self.others.items()}
        names = self.names
        for index, span in enumerate(self.blocks):
            roles.update(dict.fromkeys(names[span.start:span.stop], (BLOCK, index)))
        return roles

    def count(self, role: str) -> int:
        """How many parameters have ``role``."""
        if role == BLOCK:
            return sum(len(span) for span in self.blocks)
        return sum(1 for r in self.others.values() if r == role)


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _inside(name: str, path: str) -> bool:
    return not path or name.startswith(path + ".")


def _depth(path: str) -> int:
    return path.count(".") + 1 if path else 0


def _common_path(a: str, b: str) -> str:
    common: list[str] = []
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        common.append(x)
    return ".".join(common)


def may_be_vit(view: ModelView) -> bool:
    """A quick test that turns away most models that are not ViTs, before any structural analysis.

    A ViT's token or position table is a parameter of its own (no layer's ``weight``/``bias``) that sits
    once in the model, outside the repeated blocks. ConvNeXt's ``gamma``, Swin's relative-position tables,
    Swin-V2's ``q_bias``/``logit_scale`` are all repeated block by block (same name up to the block
    numbers, same shape in the first two blocks), and BERT has no such parameter at all. The free-standing
    parameters are picked by their local names at C speed, so turning a model away costs a few passes over
    the few of them rather than over every name.
    """
    local_names = view.local_names
    free_locals = set(local_names) - _LAYER_PARAMS
    if not free_locals:
        return False
    # One lookup per parameter in a dict of the few distinct local names (is it free?).
    is_free = dict.fromkeys(free_locals, True)
    free = list(compress(view.names, map(is_free.get, local_names)))
    patterns = "\n".join(free).encode().translate(None, _DIGITS).split(b"\n")
    counts = Counter(patterns)
    if 1 in counts.values():
        return True
    # Every one is repeated by name; an ensemble of two differently sized ViTs repeats its tokens with other
    # shapes (two shapes read, not the whole model's).
    names, params, shape_of = view.names, view.params, view.shape_of
    for pattern in counts:
        first = patterns.index(pattern)
        second = patterns.index(pattern, first + 1)
        if shape_of(params[names.index(free[first])]) != shape_of(params[names.index(free[second])]):
            return True
    return False


class _Stack(NamedTuple):
    path: str
    blocks: tuple[range, ...]
    numel: int
    width: int


def _most_common(values: list[int]) -> int:
    """The most frequent value; on a tie the first seen (as ``Counter.most_common``)."""
    return max(dict.fromkeys(values), key=values.count)


def _residual_width(shapes: Sequence[torch.Size]) -> int | None:
    vectors = [shape[0] for shape in shapes if len(shape) == 1]
    if vectors:
        return _most_common(vectors)
    inputs = [shape[1] for shape in shapes if len(shape) == 2]
    return _most_common(inputs) if inputs else None


def _as_stack(view: ModelView, path: str, module: nn.Module) -> _Stack | None:
    """The container at ``path`` as a stack of identical transformer blocks, or None.

    The caller passes only containers: a ``ModuleList``/``Sequential``, or a module whose children (two or
    more) are all numbered by their names (``encoder_layer_0``, ...), as torchvision's are once rebuilt
    from names.

    Parameters are listed depth first, so ``n`` blocks of ``size`` parameters each are one run of
    ``n * size`` positions and every comparison below is one C-level pass over that run, not one per block.
    """
    prefix = path + "." if path else ""
    children = [prefix + name for name, child in module._modules.items() if child is not None]
    if not children:
        return None
    first = view.span(children[0])
    start, size, count = first.start, len(first), len(children)
    stop = start + size * count
    # The last block ends the run; with the names checked below, every block between holds ``size`` too.
    if size < _MIN_BLOCK_MATRICES or view.span(children[-1]) != range(stop - size, stop):
        return None
    # Without wrappers below the root the children are the modules at their paths (no dict by path needed).
    kids = ([child for child in module._modules.values() if child is not None] if view.matches_torch_listing
            else list(map(view.modules.get, children)))
    if list(map(type, kids)).count(type(kids[0])) != count:
        return None
    # Same names below each block's own path: block k's names are block 0's with k's path in front.
    names = view.names
    skip = len(children[0]) + 1
    relative = list(map(itemgetter(slice(skip, None)), names[start:first.stop]))
    expected = [f"{child}." + f"\n{child}.".join(relative) for child in children[1:]]
    if "\n".join(names[first.stop:stop]) != "\n".join(expected):
        return None
    # Shapes last: a container that fails on structure is turned away without reading any.
    shapes = view.shapes
    block = shapes[start:first.stop]
    if list(map(len, block)).count(2) < _MIN_BLOCK_MATRICES:
        return None
    # Each block's shapes are the previous block's: the run shifted by one block compares equal.
    if shapes[start + size:stop] != shapes[start:stop - size]:
        return None
    width = _residual_width(block)
    if width is None:
        return None
    blocks = tuple(map(range, range(start, stop, size), range(start + size, stop + size, size)))
    return _Stack(path, blocks, sum(map(prod, block)) * count, width)


def _containers(view: ModelView) -> list[tuple[str, nn.Module]]:
    """The ``ModuleList``/``Sequential`` modules, in tree order (found by type at C speed)."""
    return view.modules_of_type(_CONTAINER_TYPES)


def _numbered_containers(view: ModelView) -> list[tuple[str, nn.Module]]:
    """Plain modules whose children (two or more) are all numbered by name (``encoder_layer_0``)."""
    return [(path, module) for path, module in view.modules.items()
            if not isinstance(module, _CONTAINER_TYPES) and len(children := module._modules) >= 2
            and all(name[-1:].isdigit() for name, child in children.items() if child is not None)]


def _stacks(view: ModelView, containers: list[tuple[str, nn.Module]]) -> list[_Stack]:
    return [s for path, module in containers if (s := _as_stack(view, path, module)) is not None]


def _largest_stack(view: ModelView) -> _Stack | None:
    # Stacks are ModuleLists or Sequentials in every library; a plain module with numbered children (a
    # torchvision encoder rebuilt from its names) is looked for only when there is none.
    stacks = _stacks(view, _containers(view)) or _stacks(view, _numbered_containers(view))
    # A container of whole models (an ensemble) is not a block stack: its blocks hold stacks themselves.
    stacks = [s for s in stacks if not any(o is not s and _inside(o.path, s.path) for o in stacks)]
    largest = max(stacks, key=lambda s: s.numel, default=None)
    if largest is None:
        return None
    # Two equal backbones (an ensemble, a teacher beside its student): which one is "the" ViT is a choice
    # for the user, not for a structural guess that would give the other one the head's lr.
    twins = [s for s in stacks if s.numel == largest.numel and s.width == largest.width
             and len(s.blocks) == len(largest.blocks)]
    return largest if len(twins) == 1 else None


def _is_final_norm(path: str, module: nn.Module) -> bool:
    """A norm module (the caller checks that it sits beside the stack or one of its ancestors)."""
    local = path.rpartition(".")[2]
    if local.startswith("fc"):  # timm/MAE ``fc_norm``: the norm of the pooled feature, part of the head
        return False
    lowered = local.lower()
    return is_norm_module(type(module)) or "norm" in lowered or lowered.startswith("ln")


def _is_sequence_param(name: str, shape: tuple[int, ...] | torch.Size, width: int) -> bool:
    """A token or an absolute position table of the sequence: ``[1, n, D]`` (timm, torchvision, HF), or a
    free-standing ``[D]``/``[n, D]`` tensor that no layer owns as its weight (OpenCLIP's ``class_embedding``,
    ``positional_embedding``)."""
    if not shape or shape[-1] != width:
        return False
    if len(shape) == 3:
        return shape[0] == 1
    if name.rpartition(".")[2] in ("weight", "bias"):
        return False
    return len(shape) == 1 or (len(shape) == 2 and shape[0] != width)  # [D, D] would rather be a projection


def find_layout(view: ModelView) -> ViTLayout | None:
    """The ViT layout of ``view``'s model, or None when the model is not a plain vision transformer."""
    if not may_be_vit(view):
        return None
    stack = _largest_stack(view)
    if stack is None:
        return None
    names, shapes = view.names, view.shapes
    total = len(names)
    start, stop = stack.blocks[0].start, stack.blocks[-1].stop
    width = stack.width
    # Only the parameters outside the stack need a look of their own; the blocks are whole slices.
    # The patch embedding: a [D, C, p, p] weight outside the stack, as close to the stack as possible.
    root: str | None = None
    patch_owner = ""
    for i in chain(range(start), range(stop, total)):
        shape = shapes[i]
        if len(shape) != 4 or shape[0] != width:
            continue
        owner = _parent(names[i])
        candidate = _common_path(owner, stack.path)
        if root is None or _depth(candidate) > _depth(root):
            root, patch_owner = candidate, owner
    if root is None:
        return None
    # The backbone's parameters outside the stack: the root's run less the stack's, as two ranges.
    in_root = range(total) if not root else view.span(root)
    backbone = [*range(in_root.start, min(in_root.stop, start)), *range(max(in_root.start, stop), in_root.stop)]
    if not any(_is_sequence_param(names[i], shapes[i], width) for i in backbone):
        return None

    # Final norms sit beside the stack or beside one of its ancestors inside the backbone.
    parts = stack.path.split(".")
    beside = [".".join(parts[:k]) for k in range(_depth(root), len(parts))]
    # The modules from the model down to the stack, the stack included: one set lookup per owner.
    above = {".".join(parts[:k]) for k in range(len(parts) + 1)}
    # Parameters listed before the stack belong to layers registered before it (the stem). Parameters
    # that a container owns directly (``cls_token`` on the model, ``pos_embedding`` on torchvision's
    # encoder) are listed before all its children whatever their place, so for those the shape decides:
    # a token or position table is stem, anything else (OpenCLIP's ``proj``) is not.
    others = dict.fromkeys(names[:start] + names[stop:], TOP)
    skip = len(root) + 1 if root else 0
    # One search over the joined names tells whether any name can hold a relative-position marker.
    text = "\n".join(map(names.__getitem__, backbone))
    rel_pos = any(map(text.__contains__, _REL_POS_MARKERS))
    in_patch = patch_owner + "." if patch_owner != root else None
    norms: dict[str, bool] = {}  # module path -> is a final norm (a norm's weight and bias ask the same)
    for i in backbone:
        name = names[i]
        if rel_pos and any(map(name[skip:].__contains__, _REL_POS_MARKERS)):
            others[name] = SHARED_REL_POS
        elif name.rpartition(".")[0] in above:
            others[name] = STEM if _is_sequence_param(name, shapes[i], width) else TOP
        elif i < start or (in_patch is not None and name.startswith(in_patch)):
            others[name] = STEM
        elif _in_final_norm(name, beside, view, norms):
            others[name] = FINAL_NORM
    return ViTLayout(root, stack.path, len(stack.blocks), width, names, stack.blocks, others)


def _in_final_norm(name: str, beside: list[str], view: ModelView, seen: dict[str, bool]) -> bool:
    """Whether ``name`` lies in a final norm: a child of one of the ``beside`` modules (memoized in ``seen``)."""
    for ancestor in beside:
        if ancestor and not name.startswith(ancestor + "."):
            continue
        rest = name[len(ancestor) + 1:] if ancestor else name
        child, dot, _ = rest.partition(".")
        if not dot:
            continue
        path = ancestor + "." + child if ancestor else child
        found = seen.get(path)
        if found is None:
            module = view.module(path)
            found = seen[path] = module is not None and _is_final_norm(path, module)
        if found:
            return True
    return False
