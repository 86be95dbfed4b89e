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

import bisect
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
    path = name.rpartition(".")[0]
    while path:
        role = roles.get(path)
        if role is not None:
            return role
        path = path.rpartition(".")[0]
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
    """Positions of the parameters that may be weights (rank 2 or more), shapes read only where needed."""

    def __init__(self, view: ModelView, ranks: list[int], fours: list[int]) -> None:
        self.view = view
        self.params = view.params
        # Only parameters of rank 2 or more can be non-vector weights; the 4-D ones are known already.
        others = [i for rank in set(ranks) if rank >= 2 and rank != 4 for i in _positions(ranks, rank)]
        self.positions = sorted(fours + others) if others else fours
        self.widths: dict[tuple[torch.Size, ...], int | None] = {}  # block widths by weight shapes
        self._children: dict[str, list[str]] = {}

    def children(self, path: str) -> list[str]:
        kids = self._children.get(path)
        if kids is None:
            module = self.view.modules.get(path)
            prefix = path + "." if path else ""
            items = module._modules.items() if module is not None else ()
            kids = self._children[path] = [prefix + name for name, child in items if child is not None]
        return kids


def _positions(ranks: list[int], rank: int) -> list[int]:
    """Indices of the parameters of ``rank``, found by C-level searches (models hold few of rank 2+)."""
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
    verdicts: dict[str, tuple[int, str, list[str], int] | None] = {}
    seen: set[str] = set()
    for i in kernels:
        # Walk up from the kernel, innermost first: a valid container makes its ancestors moot (the
        # innermost one wins), and a module walked before had its ancestors walked then.
        path = names[i].rpartition(".")[0]
        while path not in seen:
            seen.add(path)
            parent, _, last = path.rpartition(".")
            if last.isdigit():
                if parent not in verdicts:
                    verdicts[parent] = _container(index, parent)
                if verdicts[parent] is not None:
                    break
            if not path:
                break
            path = parent
    found = [v for v in verdicts.values() if v is not None]
    # A depth-1 stage can itself look like a block: keep only the innermost containers. What is left are
    # disjoint subtrees, so the order of their parameters is the order of the tree.
    if len(found) > 1:
        paths = [p for _, p, _, _ in found]
        found = [c for c in found if not any(o != c[1] and _is_within(o, c[1]) for o in paths)]
        found.sort(key=lambda c: c[0])
    return [(path, kids, width) for _, path, kids, width in found]


def _container(index: _Index, path: str) -> tuple[int, str, list[str], int] | None:
    """(first position, path, blocks, width) when every child of ``path`` is a block of one width."""
    span = index.view.span(path)
    if not span:
        return None
    kids = index.children(path)
    if not kids or not all(k.rpartition(".")[2].isdigit() for k in kids):
        return None
    # ``_Index.block_width`` of every kid, inlined: this loop runs once per block of the model.
    span_of, positions, params, widths = index.view.span, index.positions, index.params, index.widths
    left = bisect.bisect_left
    width = None
    for kid in kids:
        kid_span = span_of(kid)
        lo = left(positions, kid_span.start)
        hi = left(positions, kid_span.stop, lo)
        if hi - lo < 3:
            return None
        key = tuple([params[i].shape for i in positions[lo:hi]])
        kid_width = widths.get(key, -1)
        if kid_width == -1:
            kid_width = widths[key] = _block_width([tuple(shape) for shape in key if _matrix_like(shape)])
        if kid_width is None or (width is not None and kid_width != width):
            return None
        width = kid_width
    return span.start, path, kids, width  # type: ignore[return-value]


def _overlaps(span: range, ranges: list[range], points: set[int]) -> bool:
    start, stop = span.start, span.stop
    for r in ranges:
        if r.start < stop and start < r.stop:
            return True
    return any(i in span for i in points)


def _largest_part(view: ModelView, start: str, stop: str, avoid: list[range], points: set[int]) -> str:
    """The largest ancestor of ``start`` (below ``stop``) holding none of the ``avoid``/``points`` params."""
    best = start
    path = start
    while path and path != stop:
        if _overlaps(view.span(path), avoid, points):
            break
        best = path
        path = _parent(path)
    return best


def find_layout(view: ModelView) -> Layout | None:
    """The ConvNeXt in ``view``'s model, or None when there is none (or it is not laid out as one)."""
    params = view.params
    ranks = list(map(_rank, params))
    fours = _positions(ranks, 4) if 4 in ranks else []
    four_shapes = [params[i].shape for i in fours]
    kernels = [i for i, s in zip(fours, four_shapes, strict=True) if s[1] == 1 and max(s[2], s[3]) >= 2]
    if len(kernels) < 2:
        return None  # every block of at least two stages starts with a depthwise kernel
    index = _Index(view, ranks, fours)
    containers = _block_containers(index, kernels)
    if len(containers) < 2:
        return None
    widths = [w for _, _, w in containers]
    if any(b < a for a, b in itertools.pairwise(widths)):
        return None  # not one backbone's stages in depth order

    span_of = view.span
    paths = [path for path, _, _ in containers]
    block_spans = [span_of(path) for path in paths]
    first_block = block_spans[0].start
    last_block = block_spans[-1].stop - 1

    # Downsample layers. A stage wrapper (timm ``stages.S``, transformers ``stages.S``) holds its blocks
    # and its downsample; otherwise (torchvision, the research repo) the downsample is the convolution
    # that maps the previous stage's width to this one's, found by shape.
    downsample: dict[int, str] = {}
    taken: list[range] = list(block_spans)
    unwrapped: list[int] = []
    for s, path in enumerate(paths):
        parent = _parent(path)
        # No other stage under the parent (the stages are disjoint, so none is the parent itself).
        alone = bool(parent) and not any(c.startswith(parent + ".") for c in paths[:s] + paths[s + 1 :])
        if path and alone:
            kids = index.children(parent)
            if kids != [path]:
                # Only this stage's blocks lie under the parent, so anything more there is not a block.
                if len(span_of(parent)) > len(block_spans[s]):
                    for kid in kids:
                        if kid != path and (kid_span := span_of(kid)):
                            downsample[s] = kid  # the single non-block child of the stage wrapper
                            taken.append(kid_span)
                            break
                continue
        unwrapped.append(s)
    # Spatial convolutions outside the blocks: the stem's and the downsample layers'.
    inside: set[int] = set()
    for r in taken:
        inside.update(fours[bisect.bisect_left(fours, r.start) : bisect.bisect_left(fours, r.stop)])
    convs = [
        i for i, shape in zip(fours, four_shapes, strict=True)
        if i not in inside and _matrix_like(shape) and max(shape[2], shape[3]) >= 2
    ]
    shape_of = dict(zip(fours, four_shapes, strict=True))
    ds_convs: dict[int, int] = {}
    for s in unwrapped:
        if s == 0:
            continue
        want = (widths[s], widths[s - 1])
        used = set(ds_convs.values())
        match = next((i for i in convs if i < last_block and i not in used and shape_of[i][:2] == want), None)
        if match is not None:
            ds_convs[s] = match
    stem_pool = [i for i in convs if i not in ds_convs.values()]

    # The stem: a strided convolution producing stage 0's width, registered before the first block,
    # searched from the stages' common ancestor upward (the wrapper around a nested backbone comes last).
    lca = paths[0]
    for path in paths[1:]:
        while not _is_within(path, lca):
            lca = _parent(lca)
    stem_conv: int | None = None
    root = lca
    while True:
        span = span_of(root)
        stem_conv = next(
            (i for i in stem_pool if i in span and i < first_block and shape_of[i][0] == widths[0]), None
        )
        if stem_conv is not None:
            break
        if not root:
            return None
        root = _parent(root)

    names = view.names
    conv_params = [*ds_convs.values(), stem_conv]
    for s, conv in ds_convs.items():
        avoid = {c for c in conv_params if c != conv}
        downsample[s] = _largest_part(view, _parent(names[conv]), root, block_spans, avoid)
    for s in range(1, len(containers)):
        if s not in downsample and widths[s] != widths[s - 1]:
            return None  # the width changes but nothing maps it: not a ConvNeXt we understand
    stem = _largest_part(view, _parent(names[stem_conv]), root, block_spans, set(ds_convs.values()))

    roles: dict[str, Role] = {stem: ("stem",)}
    for s, path in downsample.items():
        roles[path] = ("downsample", s)
    for s, (_, blocks, _) in enumerate(containers):
        for b, block in enumerate(blocks):
            roles[block] = ("block", s, b)
    # Whatever the backbone registers before its first block and is not a downsample belongs to the stem,
    # also when the stem is split into sibling modules (timm's ``features_only`` gives ``stem_0``, ``stem_1``).
    span = span_of(root)
    for i in range(span.start, min(span.stop, first_block)):
        owner = _parent(names[i])
        if owner != root and _role_of(roles, names[i]) is None:
            roles[owner] = ("stem",)
    norm_pre = f"{root}.{NORM_PRE}" if root else NORM_PRE
    if span_of(norm_pre):
        roles[norm_pre] = (NORM_PRE,)
    return Layout(
        root=root,
        stem=stem,
        depths=tuple(len(blocks) for _, blocks, _ in containers),
        widths=tuple(widths),
        roles=roles,
    )
