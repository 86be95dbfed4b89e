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
operations. A model is turned away before any of that when none of its tokens could be a sequence
parameter (see :func:`may_be_vit`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter, itemgetter

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

_shape = attrgetter("shape")
_ndim = attrgetter("ndim")


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
        others: Normalized name -> role for every parameter outside the blocks, frozen included.
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
    numbers, same shape in the first two blocks), and BERT has no such parameter at all. Works on the
    joined names, so turning a model away costs about as much as copying its names once.
    """
    # String methods only: they run at C speed over the joined names, with no Python work per name.
    text = "\n".join(view.names) + "\n"
    pieces = text.replace(".weight\n", "\r").replace(".bias\n", "\r").split("\n")
    # Each newline now ends a free-standing name: the last line of each piece.
    free = list(map(itemgetter(2), map(str.rpartition, pieces[:-1], repeat("\r"))))
    if not free:
        return False
    patterns = "\n".join(free).encode().translate(None, _DIGITS).split(b"\n")
    names, params = view.names, view.params
    for pattern, count in Counter(patterns).items():
        if count == 1:
            return True
        # Repeated by name; an ensemble of two differently sized ViTs repeats its tokens with other shapes.
        first = patterns.index(pattern)
        second = patterns.index(pattern, first + 1)
        if params[names.index(free[first])].shape != params[names.index(free[second])].shape:
            return True
    return False


@dataclass(frozen=True)
class _Stack:
    path: str
    blocks: tuple[range, ...]
    numel: int
    width: int


def _residual_width(shapes: list[torch.Size]) -> int | None:
    vectors = Counter(shape[0] for shape in shapes if len(shape) == 1)
    if vectors:
        return vectors.most_common(1)[0][0]
    inputs = Counter(shape[1] for shape in shapes if len(shape) == 2)
    return inputs.most_common(1)[0][0] if inputs else None


def _as_stack(view: ModelView, path: str, module: nn.Module) -> _Stack | None:
    """The container at ``path`` as a stack of identical transformer blocks, or None.

    The caller passes only containers: a ``ModuleList``/``Sequential``, or a module whose children (two or
    more) are all numbered by their names (``encoder_layer_0``, ...), as torchvision's are once rebuilt
    from names.
    """
    prefix = path + "." if path else ""
    children = [prefix + n for n, c in module._modules.items() if c is not None]
    if not children:
        return None
    modules, params, names = view.modules, view.params, view.names
    spans = [view.span(child) for child in children]
    first = spans[0]
    first_params = params[first.start:first.stop]
    if list(map(_ndim, first_params)).count(2) < _MIN_BLOCK_MATRICES:
        return None
    size = len(first)
    block_type = type(modules.get(children[0]))
    for child, span in zip(children, spans, strict=True):
        if len(span) != size or type(modules.get(child)) is not block_type:
            return None
    shapes = list(map(_shape, first_params))
    # Same names below each block's own path: block k's names are block 0's with k's path in front.
    skip = len(children[0]) + 1
    relative = list(map(itemgetter(slice(skip, None)), names[first.start:first.stop]))
    for child, span in zip(children[1:], spans[1:], strict=True):
        if list(map(_shape, params[span.start:span.stop])) != shapes:
            return None
        head = child + "."
        if "\n".join(names[span.start:span.stop]) != head + ("\n" + head).join(relative):
            return None
    width = _residual_width(shapes)
    if width is None:
        return None
    per_block = sum(map(torch.Size.numel, shapes))
    return _Stack(path, tuple(spans), per_block * len(children), width)


def _containers(view: ModelView) -> list[str]:
    """Paths of the ``ModuleList``/``Sequential`` modules, in tree order (found by type at C speed)."""
    modules = view.modules
    types = list(map(type, modules.values()))
    kinds = [kind for kind in set(types) if issubclass(kind, _CONTAINER_TYPES)]
    if not kinds:
        return []
    paths = list(modules)
    found: list[int] = []
    for kind in kinds:
        at = types.index(kind)
        while True:
            found.append(at)
            try:
                at = types.index(kind, at + 1)
            except ValueError:
                break
    return [paths[at] for at in sorted(found)]


def _numbered_containers(view: ModelView) -> list[str]:
    """Paths of plain modules whose children (two or more) are all numbered by name (``encoder_layer_0``)."""
    return [path for path, module in view.modules.items()
            if not isinstance(module, _CONTAINER_TYPES) and len(children := module._modules) >= 2
            and all(name[-1:].isdigit() for name, child in children.items() if child is not None)]


def _stacks(view: ModelView, paths: list[str]) -> list[_Stack]:
    modules = view.modules
    return [s for path in paths if (s := _as_stack(view, path, modules[path])) is not None]


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
    names, params = view.names, view.params
    start, stop = stack.blocks[0].start, stack.blocks[-1].stop
    # Only the parameters outside the stack need a look of their own; the blocks are whole slices.
    outside = [*range(start), *range(stop, len(names))]
    width = stack.width
    # The patch embedding: a [D, C, p, p] weight outside the stack, as close to the stack as possible.
    root: str | None = None
    patch_owner = ""
    for i in outside:
        param = params[i]
        if param.ndim != 4 or param.shape[0] != width:
            continue
        owner = _parent(names[i])
        candidate = _common_path(owner, stack.path)
        if root is None or _depth(candidate) > _depth(root):
            root, patch_owner = candidate, owner
    if root is None:
        return None
    in_root = range(len(names)) if not root else view.span(root)
    backbone = [i for i in outside if i in in_root]
    if not any(_is_sequence_param(names[i], params[i].shape, width) for i in backbone):
        return None

    # Final norms sit beside the stack or beside one of its ancestors inside the backbone.
    parts = stack.path.split(".")
    root_parts = _depth(root)
    beside = [".".join(parts[:k]) for k in range(root_parts, len(parts))]
    # Parameters listed before the stack belong to layers registered before it (the stem). Parameters
    # that a container owns directly (``cls_token`` on the model, ``pos_embedding`` on torchvision's
    # encoder) are listed before all its children whatever their place, so for those the shape decides:
    # a token or position table is stem, anything else (OpenCLIP's ``proj``) is not.
    others = dict.fromkeys(names[:start], TOP)
    others.update(dict.fromkeys(names[stop:], TOP))
    skip = len(root) + 1 if root else 0
    modules = view.modules
    for i in backbone:
        name = names[i]
        owner = _parent(name)
        if any(marker in name[skip:] for marker in _REL_POS_MARKERS):
            others[name] = SHARED_REL_POS
        elif _inside(stack.path, owner) or owner == stack.path:
            others[name] = STEM if _is_sequence_param(name, params[i].shape, width) else TOP
        elif i < start or (patch_owner != root and _inside(name, patch_owner)):
            others[name] = STEM
        elif _in_final_norm(name, beside, modules):
            others[name] = FINAL_NORM
    return ViTLayout(root, stack.path, len(stack.blocks), width, names, stack.blocks, others)


def _in_final_norm(name: str, beside: list[str], modules: dict[str, nn.Module]) -> bool:
    for ancestor in beside:
        if ancestor and not name.startswith(ancestor + "."):
            continue
        rest = name[len(ancestor) + 1:] if ancestor else name
        child, dot, _ = rest.partition(".")
        if not dot:
            continue
        path = ancestor + "." + child if ancestor else child
        module = modules.get(path)
        if module is not None and _is_final_norm(path, module):
            return True
    return False
