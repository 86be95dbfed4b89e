"""Find a ConvNeXt inside any model by its structure: module tree, child names and parameter shapes.

Every library spells ConvNeXt differently (timm ``stages.S.blocks.B``, torchvision ``features.(2S+1).B``,
transformers ``encoder.stages.S.layers.B``, the research repo ``stages.S.B`` with the downsample layers
listed before any stage), and a detector or segmenter nests it under a prefix of its own. What they share
is the block: a depthwise ``k x k`` convolution on ``C`` channels, then a pointwise expansion ``C -> E``
and a projection ``E -> C`` (as ``Linear`` or ``1x1`` convolutions), plus vectors (norm, layer scale, GRN,
biases). That signature, read from shapes alone, finds the stages; the stem and the downsample layers are
then found by their place relative to the stages and by the channel counts they connect. No model name
and no depth table is consulted, so any depth and any wrapper works.

Every plugin is asked about every model, so the search is built to be cheap. Parameters are listed
depth-first (a module's parameters are one run, :meth:`ModelView.span`), and every block starts with a
depthwise kernel ``[C, 1, k, k]``: a model without two of them is rejected after one pass over the
parameters' ranks, and only the modules above those kernels are ever examined.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from layerdecay import ModelView

__all__ = ["Layout", "Role", "find_layout"]

# The child of the backbone root that timm's head-norm-first variants use for the norm applied before
# pooling; timm's layout merges it into the last block.
NORM_PRE = "norm_pre"

# A parameter's role: ("stem",), ("downsample", stage), ("block", stage, index), ("norm_pre",).
Role = tuple

_rank = torch.Tensor.dim


@dataclass(frozen=True)
class Layout:
    """Where a ConvNeXt's parts are, by normalized module path.

    Attributes:
        root: Path of the module that holds the whole ConvNeXt (stem and stages); '' for the model itself.
        stem: Path of the stem module.
        depths: Number of blocks per stage.
        widths: Channels per stage.
        roles: Module path -> role, for the stem, every downsample, every block and ``norm_pre``.
    """

    root: str
    stem: str
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    roles: dict[str, Role]

    def role_of(self, name: str) -> Role | None:
        """The role of the parameter called ``name``: that of its nearest ancestor with one, or None."""
        return _role_of(self.roles, name)


def _role_of(roles: dict[str, Role], name: str) -> Role | None:
    parts = name.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        role = roles.get(".".join(parts[:depth]))
        if role is not None:
            return role
    return None


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _is_within(path: str, ancestor: str) -> bool:
    return not ancestor or path == ancestor or path.startswith(ancestor + ".")


def _matrix_like(shape: tuple[int, ...]) -> bool:
    """Whether a shape is a real kernel/matrix rather than a vector in disguise ([C,1,1], [1,1,1,C])."""
    # Counts the dimensions above 1 without a Python-level loop (sizes are never negative).
    return len(shape) - shape.count(1) - shape.count(0) >= 2


def _block_width(weights: list[tuple[int, ...]]) -> int | None:
    """The channel count of a ConvNeXt block whose non-vector weights are ``weights``, else None."""
    if len(weights) != 3:
        return None
    dw, expand, project = weights
    if len(dw) != 4 or dw[1] != 1 or max(dw[2], dw[3]) < 2:
        return None
    channels = dw[0]
    if len(expand) not in (2, 4) or len(project) != len(expand) or any(d != 1 for d in expand[2:] + project[2:]):
        return None
    hidden = expand[0]
    if expand[1] != channels or project[0] != channels or project[1] != hidden:
        return None
    return channels


class _Index:
    """Ranks of every parameter (one C-level pass) and shapes on demand, over the view's spans."""

    def __init__(self, view: ModelView, ranks: list[int]) -> None:
        self.view = view
        self.params = view.params
        self.ranks = ranks
        self._shapes: dict[int, tuple[int, ...]] = {}

    def shape(self, i: int) -> tuple[int, ...]:
        shape = self._shapes.get(i)
        if shape is None:
            shape = self._shapes[i] = tuple(self.params[i].shape)
        return shape

    def span(self, path: str) -> range:
        return self.view.span(path)

    def block_width(self, path: str) -> int | None:
        """``_block_width`` of the module at ``path``, stopping at its fourth non-vector weight."""
        ranks, params = self.ranks, self.params
        weights: list[tuple[int, ...]] = []
        for i in self.view.span(path):
            if ranks[i] >= 2:
                shape = params[i].shape
                if _matrix_like(shape):
                    if len(weights) == 3:
                        return None
                    weights.append(tuple(shape))
        return _block_width(weights)

    def children(self, path: str) -> list[str]:
        module = self.view.modules.get(path)
        if module is None:
            return []
        prefix = path + "." if path else ""
        return [prefix + name for name, child in module._modules.items() if child is not None]


def _positions(ranks: list[int], rank: int) -> list[int]:
    """Indices of the parameters of ``rank``, found by C-level searches (models hold few 4-D ones)."""
    found: list[int] = []
    find = ranks.index
    start = 0
    try:
        while True:
            start = find(rank, start)
            found.append(start)
            start += 1
    except ValueError:
        return found


def _block_containers(index: _Index, kernels: list[int]) -> list[tuple[str, list[str], int]]:
    """Innermost modules whose children are all ConvNeXt blocks of one width: (path, blocks, width).

    A block's first non-vector weight is its depthwise kernel, so such a container is the parent of a
    numbered module above one of ``kernels``: only those parents are examined.
    """
    names = index.view.names
    candidates: dict[str, None] = {}
    for i in kernels:
        parts = names[i].split(".")
        for depth in range(len(parts) - 1):
            if parts[depth].isdigit():
                candidates[".".join(parts[:depth])] = None
    found: list[tuple[int, str, list[str], int]] = []
    for path in candidates:
        span = index.span(path)
        if not span:
            continue
        kids = index.children(path)
        if not kids or any(not k.rpartition(".")[2].isdigit() for k in kids):
            continue
        width = None
        for kid in kids:
            kid_width = index.block_width(kid)
            if kid_width is None or (width is not None and kid_width != width):
                width = None
                break
            width = kid_width
        if width is not None:
            found.append((span.start, path, kids, width))
    # A depth-1 stage can itself look like a block: keep only the innermost containers. What is left are
    # disjoint subtrees, so the order of their parameters is the order of the tree.
    paths = [p for _, p, _, _ in found]
    inner = [c for c in found if not any(o != c[1] and _is_within(o, c[1]) for o in paths)]
    inner.sort(key=lambda c: c[0])
    return [(path, kids, width) for _, path, kids, width in inner]


def _overlaps(span: range, ranges: list[range], points: set[int]) -> bool:
    return any(r.start < span.stop and span.start < r.stop for r in ranges) or any(i in span for i in points)


def _largest_part(index: _Index, start: str, stop: str, avoid: list[range], points: set[int]) -> str:
    """The largest ancestor of ``start`` (below ``stop``) holding none of the ``avoid``/``points`` params."""
    best = start
    path = start
    while path and path != stop:
        if _overlaps(index.span(path), avoid, points):
            break
        best = path
        path = _parent(path)
    return best


def find_layout(view: ModelView) -> Layout | None:
    """The ConvNeXt in ``view``'s model, or None when there is none (or it is not laid out as one)."""
    params = view.params
    ranks = list(map(_rank, params))
    fours = _positions(ranks, 4) if 4 in ranks else []
    kernels = []
    for i in fours:
        shape = params[i].shape
        if shape[1] == 1 and max(shape[2], shape[3]) >= 2:
            kernels.append(i)
    if len(kernels) < 2:
        return None  # every block of at least two stages starts with a depthwise kernel
    index = _Index(view, ranks)
    containers = _block_containers(index, kernels)
    if len(containers) < 2:
        return None
    widths = [w for _, _, w in containers]
    if any(b < a for a, b in itertools.pairwise(widths)):
        return None  # not one backbone's stages in depth order

    block_spans = [index.span(path) for path, _, _ in containers]
    first_block = block_spans[0].start
    last_block = block_spans[-1].stop - 1

    # Downsample layers. A stage wrapper (timm ``stages.S``, transformers ``stages.S``) holds its blocks
    # and its downsample; otherwise (torchvision, the research repo) the downsample is the convolution
    # that maps the previous stage's width to this one's, found by shape.
    downsample: dict[int, str] = {}
    taken: list[range] = list(block_spans)
    unwrapped: list[int] = []
    for s, (path, _, _) in enumerate(containers):
        parent = _parent(path)
        others = [c for c, _, _ in containers if c != path and _is_within(c, parent)]
        if path and not others and index.children(parent) != [path]:
            # Only this stage's blocks lie under the parent, so anything more there is not a block.
            if len(index.span(parent)) > len(block_spans[s]):
                for kid in index.children(parent):
                    if kid != path and index.span(kid):
                        downsample[s] = kid  # the single non-block child of the stage wrapper
                        taken.append(index.span(kid))
                        break
            continue
        unwrapped.append(s)
    # Spatial convolutions outside the blocks: the stem's and the downsample layers'.
    convs = []
    for i in fours:
        shape = index.shape(i)
        if not any(i in r for r in taken) and _matrix_like(shape) and max(shape[2], shape[3]) >= 2:
            convs.append(i)
    ds_convs: dict[int, int] = {}
    for s in unwrapped:
        if s == 0:
            continue
        want = (widths[s], widths[s - 1])
        used = set(ds_convs.values())
        match = next((i for i in convs if i < last_block and i not in used and index.shape(i)[:2] == want), None)
        if match is not None:
            ds_convs[s] = match
    stem_pool = [i for i in convs if i not in ds_convs.values()]

    # The stem: a strided convolution producing stage 0's width, registered before the first block,
    # searched from the stages' common ancestor upward (the wrapper around a nested backbone comes last).
    lca = containers[0][0]
    for path, _, _ in containers[1:]:
        while not _is_within(path, lca):
            lca = _parent(lca)
    stem_conv: int | None = None
    root = lca
    while True:
        span = index.span(root)
        stem_conv = next(
            (i for i in stem_pool if i in span and i < first_block and index.shape(i)[0] == widths[0]), None
        )
        if stem_conv is not None:
            break
        if not root:
            return None
        root = _parent(root)

    conv_params = [*ds_convs.values(), stem_conv]
    for s, conv in ds_convs.items():
        avoid = {c for c in conv_params if c != conv}
        downsample[s] = _largest_part(index, _parent(view.names[conv]), root, block_spans, avoid)
    for s in range(1, len(containers)):
        if s not in downsample and widths[s] != widths[s - 1]:
            return None  # the width changes but nothing maps it: not a ConvNeXt we understand
    stem = _largest_part(index, _parent(view.names[stem_conv]), root, block_spans, set(ds_convs.values()))

    roles: dict[str, Role] = {stem: ("stem",)}
    for s, path in downsample.items():
        roles[path] = ("downsample", s)
    for s, (_, blocks, _) in enumerate(containers):
        for b, block in enumerate(blocks):
            roles[block] = ("block", s, b)
    # Whatever the backbone registers before its first block and is not a downsample belongs to the stem,
    # also when the stem is split into sibling modules (timm's ``features_only`` gives ``stem_0``, ``stem_1``).
    span = index.span(root)
    for i in range(span.start, min(span.stop, first_block)):
        owner = _parent(view.names[i])
        if owner != root and _role_of(roles, view.names[i]) is None:
            roles[owner] = ("stem",)
    norm_pre = f"{root}.{NORM_PRE}" if root else NORM_PRE
    if index.span(norm_pre):
        roles[norm_pre] = (NORM_PRE,)
    return Layout(
        root=root,
        stem=stem,
        depths=tuple(len(blocks) for _, blocks, _ in containers),
        widths=tuple(widths),
        roles=roles,
    )
