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

Every parameter then gets a *role* that every recipe maps to a layer id: ``stem`` (tokens, position
embeddings, patch embedding and any layer registered before the blocks, e.g. CLIP's ``norm_pre``), ``block``
(with its position in the stack, whatever the child is called: ``11`` or ``encoder_layer_11``),
``shared_rel_pos`` (BEiT's relative-position bias shared by all blocks), ``final_norm`` (the norm right
after the blocks: timm ``norm``, torchvision ``encoder.ln``, HF ``layernorm``; never the pooled
``fc_norm``) and ``top`` (heads, ``fc_norm``, poolers, attention-pool heads, OpenCLIP's ``proj``, and everything outside
the backbone).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from layerdecay import ModelView, is_norm_module

__all__ = ["BLOCK", "FINAL_NORM", "SHARED_REL_POS", "STEM", "TOP", "ViTLayout", "find_layout"]

STEM = "stem"
BLOCK = "block"
SHARED_REL_POS = "shared_rel_pos"
FINAL_NORM = "final_norm"
TOP = "top"

# A block of a transformer has at least attention in/out and MLP in/out matrices.
_MIN_BLOCK_MATRICES = 4
# Name fragments of a relative-position bias; outside the blocks it is BEiT's shared one.
_REL_POS_MARKERS = ("rel_pos", "relative_position", "position_bias")


@dataclass(frozen=True)
class ViTLayout:
    """Where the backbone is and what each parameter is.

    Attributes:
        root: Path of the backbone's root module ('' for the model itself).
        stack: Path of the block container.
        depth: Number of blocks.
        width: Residual width ``D``.
        roles: Normalized parameter name -> (role, block index or -1), for every parameter, frozen included.
    """

    root: str
    stack: str
    depth: int
    width: int
    roles: dict[str, tuple[str, int]]

    def count(self, role: str) -> int:
        """How many parameters have ``role``."""
        return sum(1 for r, _ in self.roles.values() if r == role)


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


@dataclass(frozen=True)
class _Stack:
    path: str
    children: tuple[str, ...]
    numel: int
    width: int


def _block_signature(block: nn.Module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((n, tuple(p.shape)) for n, p in block.named_parameters())


def _residual_width(signature: tuple[tuple[str, tuple[int, ...]], ...]) -> int | None:
    vectors = Counter(shape[0] for _, shape in signature if len(shape) == 1)
    if vectors:
        return vectors.most_common(1)[0][0]
    inputs = Counter(shape[1] for _, shape in signature if len(shape) == 2)
    return inputs.most_common(1)[0][0] if inputs else None


def _as_stack(path: str, module: nn.Module) -> _Stack | None:
    """The container at ``path`` as a stack of identical transformer blocks, or None.

    A container is a ``ModuleList``/``Sequential``, or any module whose children (two or more) are all
    numbered by their names (``encoder_layer_0``, ...), as torchvision's are once rebuilt from names.
    """
    children = [(n, c) for n, c in module._modules.items() if c is not None]
    if not children:
        return None
    if not isinstance(module, (nn.ModuleList, nn.Sequential)) and (
        len(children) < 2 or not all(n[-1].isdigit() for n, _ in children)
    ):
        return None
    first = children[0][1]
    signature = _block_signature(first)
    if sum(1 for _, shape in signature if len(shape) == 2) < _MIN_BLOCK_MATRICES:
        return None
    for _, child in children[1:]:
        if type(child) is not type(first) or _block_signature(child) != signature:
            return None
    width = _residual_width(signature)
    if width is None:
        return None
    per_block = 0
    for _, shape in signature:
        size = 1
        for dim in shape:
            size *= dim
        per_block += size
    prefix = path + "." if path else ""
    return _Stack(path, tuple(prefix + n for n, _ in children), per_block * len(children), width)


def _largest_stack(view: ModelView) -> _Stack | None:
    stacks = [s for path, m in view.modules.items() if (s := _as_stack(path, m)) is not None]
    # A container of whole models (an ensemble) is not a block stack: its blocks hold stacks themselves.
    stacks = [s for s in stacks if not any(o is not s and _inside(o.path, s.path) for o in stacks)]
    largest = max(stacks, key=lambda s: s.numel, default=None)
    if largest is None:
        return None
    # Two equal backbones (an ensemble, a teacher beside its student): which one is "the" ViT is a choice
    # for the user, not for a structural guess that would give the other one the head's lr.
    twins = [s for s in stacks if s.numel == largest.numel and s.width == largest.width
             and len(s.children) == len(largest.children)]
    return largest if len(twins) == 1 else None


def _is_final_norm(path: str, module: nn.Module, stack: str) -> bool:
    """A norm module beside the stack (or beside one of its ancestors): the encoder's output norm."""
    local = path.rpartition(".")[2]
    if local.startswith("fc"):  # timm/MAE ``fc_norm``: the norm of the pooled feature, part of the head
        return False
    lowered = local.lower()
    if not (is_norm_module(type(module)) or "norm" in lowered or lowered.startswith("ln")):
        return False
    return _inside(stack, _parent(path))


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
    stack = _largest_stack(view)
    if stack is None:
        return None
    in_stack = [_inside(n, stack.path) for n in view.names]
    # The patch embedding: a [D, C, p, p] weight outside the stack, as close to the stack as possible.
    root: str | None = None
    patch_owner = ""
    for name, param, inside in zip(view.names, view.params, in_stack, strict=True):
        if inside or param.ndim != 4 or param.shape[0] != stack.width:
            continue
        owner = _parent(name)
        candidate = _common_path(owner, stack.path)
        if root is None or _depth(candidate) > _depth(root):
            root, patch_owner = candidate, owner
    if root is None:
        return None
    has_sequence_param = any(
        not inside and _inside(name, root) and _is_sequence_param(name, param.shape, stack.width)
        for name, param, inside in zip(view.names, view.params, in_stack, strict=True)
    )
    if not has_sequence_param:
        return None

    block_index = {path: i for i, path in enumerate(stack.children)}
    final_norms = tuple(
        path for path, m in view.modules.items()
        if _inside(path, root) and not _inside(path, stack.path) and _is_final_norm(path, m, stack.path)
    )
    # Modules are listed in registration order (depth first): a layer registered before the stack is part
    # of the stem. Parameters that a container owns directly (``cls_token`` on the model, ``pos_embedding``
    # on torchvision's encoder) are listed before all its children whatever their place, so for those the
    # shape decides: a token or position table is stem, anything else (OpenCLIP's ``proj``) is not.
    order = {path: i for i, path in enumerate(view.modules)}
    stack_position = order[stack.path]
    prefix_len = len(stack.path) + 1 if stack.path else 0
    roles: dict[str, tuple[str, int]] = {}
    for name, param, inside in zip(view.names, view.params, in_stack, strict=True):
        if inside:
            child = stack.path + "." + name[prefix_len:].split(".", 1)[0] if stack.path else name.split(".", 1)[0]
            roles[name] = (BLOCK, block_index[child])
            continue
        if not _inside(name, root):
            roles[name] = (TOP, -1)
            continue
        owner = _parent(name)
        local = name[len(root) + 1:] if root else name
        if any(marker in local for marker in _REL_POS_MARKERS):
            roles[name] = (SHARED_REL_POS, -1)
        elif _inside(stack.path, owner) or owner == stack.path:
            stem = _is_sequence_param(name, param.shape, stack.width)
            roles[name] = (STEM, -1) if stem else (TOP, -1)
        elif order[owner] < stack_position or (patch_owner != root and _inside(name, patch_owner)):
            roles[name] = (STEM, -1)
        elif any(_inside(name, norm) for norm in final_norms):
            roles[name] = (FINAL_NORM, -1)
        else:
            roles[name] = (TOP, -1)
    return ViTLayout(root, stack.path, len(stack.children), stack.width, roles)
