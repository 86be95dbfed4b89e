"""Find a ConvNeXt inside any model by its structure: module tree, child names and parameter shapes.

Every library spells ConvNeXt differently (timm ``stages.S.blocks.B``, torchvision ``features.(2S+1).B``,
transformers ``encoder.stages.S.layers.B``, the research repo ``stages.S.B`` with the downsample layers
listed before any stage), and a detector or segmenter nests it under a prefix of its own. What they share
is the block: a depthwise ``k x k`` convolution on ``C`` channels, then a pointwise expansion ``C -> E``
and a projection ``E -> C`` (as ``Linear`` or ``1x1`` convolutions), plus vectors (norm, layer scale, GRN,
biases). That signature, read from shapes alone, finds the stages; the stem and the downsample layers are
then found by their place relative to the stages and by the channel counts they connect. No model name
and no depth table is consulted, so any depth and any wrapper works.

Every plugin is asked about every model, so the search is built to be cheap. Shapes are read from
:attr:`ModelView.shapes` (read once per plan, shared with the other plugins). Parameters are listed
depth-first (a module's parameters are one run, :meth:`ModelView.span`), and every block starts with a
depthwise kernel ``[C, 1, k, k]``: a model without two 4-D parameters is rejected after one C-level pass
over the ranks, and only the modules above the kernels are ever examined.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from operator import attrgetter, lt
from typing import NamedTuple

from torch import nn

from layerdecay import ModelView
from layerdecay.model_view import positions_of

__all__ = ["Layout", "Role", "find_layout", "find_layout_and_spans"]

# The child of the backbone root that timm's head-norm-first variants use for the norm applied before
# pooling; timm's layout merges it into the last block.
NORM_PRE = "norm_pre"

# A parameter's role: ("stem",), ("downsample", stage), ("block", stage, index), ("norm_pre",).
Role = tuple


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
    if len(dw) != 4 or dw[1] != 1 or (dw[2] < 2 and dw[3] < 2):
        return None
    channels = dw[0]
    rank = len(expand)
    if len(project) != rank or not (rank == 2 or (rank == 4 and expand[2:] == project[2:] == (1, 1))):
        return None  # pointwise: Linear, or 1x1 convolutions
    if expand[1] != channels or project[0] != channels or project[1] != expand[0]:
        return None
    return channels


class _Stage(NamedTuple):
    """A module whose children are all ConvNeXt blocks of one width, with the spans read on the way."""

    path: str
    span: range
    blocks: list[str]
    block_spans: list[range]
    width: int


def _child_names(module: nn.Module | None) -> list[str]:
    """The names of a module's children (None entries left out), in registration order."""
    if module is None:
        return []
    children = module._modules
    if None in children.values():
        return [name for name, child in children.items() if child is not None]
    return list(children)


_UNSEEN = object()


def _block_containers(view: ModelView, kernels: list[int]) -> list[_Stage]:
    """Innermost modules whose children are all ConvNeXt blocks of one width, in the order of the tree.

    A block's first non-vector weight is its depthwise kernel, so such a container is the parent of a
    numbered module above one of ``kernels``: only those parents are examined. The kernels come in tree
    order, so once a stage is found, the kernels of its other blocks are passed over unwalked.
    """
    names, module_at, span_of = view.names, view.module, view.span
    verdicts: dict[str, _Stage | None] = {}
    seen: set[str] = set()
    covered = 0  # where the last stage found ends: the kernels before it lie in its blocks
    for i in kernels:
        if i < covered:
            continue
        # Walk up from the kernel, innermost first: a valid container makes its ancestors moot (the
        # innermost one wins), and a module walked before had its ancestors walked then.
        path = names[i].rpartition(".")[0]
        while path not in seen:
            seen.add(path)
            parent, _, last = path.rpartition(".")
            if last.isdigit():
                verdict = verdicts.get(parent, _UNSEEN)
                if verdict is _UNSEEN:
                    # A block holds at least three weights, so a smaller child rules its parent out unexamined
                    # (torchvision's numbered ``block.0`` convolution, once per block).
                    parent_module = module_at(parent)
                    small = (parent_module is not None and parent_module._modules.get(last) is not None
                             and len(span_of(path)) < 3)
                    verdict = verdicts[parent] = None if small else _container(view, parent)
                if verdict is not None:
                    covered = max(covered, verdict.span.stop)
                    break
            if not path:
                break
            path = parent
    found = [v for v in verdicts.values() if v is not None]
    # A depth-1 stage can itself look like a block: keep only the innermost containers. What is left are
    # disjoint subtrees, so the order of their parameters is the order of the tree.
    if len(found) > 1:
        found.sort(key=_span_start)
        # Spans nest as the modules do: when consecutive ones are disjoint, no container holds another.
        spans = list(map(_SPAN, found))
        if any(map(lt, map(_START, spans[1:]), map(_STOP, spans))):
            paths = [c.path for c in found]
            found = [c for c in found if not any(o != c.path and _is_within(o, c.path) for o in paths)]
    return found


_SPAN, _START, _STOP = attrgetter("span"), attrgetter("start"), attrgetter("stop")


def _span_start(stage: _Stage) -> int:
    return stage.span.start


def _container(view: ModelView, path: str) -> _Stage | None:
    """The stage at ``path`` when every child of ``path`` is a block, all of one width; else None."""
    span = view.span(path)
    if not span:
        return None
    local = _child_names(view.module(path))
    if not local or not all(map(str.isdigit, local)):
        return None
    kids = list(map((path + "." if path else "").__add__, local))
    shapes = view.shapes
    kid_spans = list(map(view.span, kids))
    first, last = kid_spans[0], kid_spans[-1]
    key = shapes[first.start : first.stop]
    width = _width(key)
    if width is None:
        return None
    # The blocks of a stage are alike: when the kids' spans tile one run of the same shapes over and
    # over, one comparison at C level checks them all.
    size, count = len(key), len(kids)
    if (last.stop - first.start == size * count and list(map(len, kid_spans)).count(size) == count
            and shapes[first.start : last.stop] == key * count):
        return _Stage(path, span, kids, kid_spans, width)
    for kid_span in kid_spans:
        if _width(shapes[kid_span.start : kid_span.stop]) != width:
            return None
    return _Stage(path, span, kids, kid_spans, width)


@functools.lru_cache(maxsize=1024)
def _width(shapes: tuple) -> int | None:
    """The block width of a child whose parameters have ``shapes``, else None: a pure function of the shapes,
    worked out once per process (a model has a few kinds of block, and is planned more than once)."""
    return _block_width([s for s in shapes if _matrix_like(s)])


def _overlaps(span: range, starts: list[int], stops: list[int], points: set[int]) -> bool:
    """Whether ``span`` shares a parameter with one of the ordered, disjoint ranges ``starts[k]:stops[k]``
    (found by bisection), or holds one of ``points``."""
    k = bisect.bisect_right(stops, span.start)
    if k < len(starts) and starts[k] < span.stop:
        return True
    return any(i in span for i in points)


def _largest_part(view: ModelView, start: str, stop: str, avoid: tuple[list[int], list[int]], points: set[int]) -> str:
    """The largest ancestor of ``start`` (below ``stop``) holding none of the ``avoid``/``points`` params."""
    best = start
    path = start
    while path and path != stop:
        if _overlaps(view.span(path), *avoid, points):
            break
        best = path
        path = _parent(path)
    return best


def find_layout(view: ModelView) -> Layout | None:
    """The ConvNeXt in ``view``'s model, or None when there is none (or it is not laid out as one)."""
    found = find_layout_and_spans(view)
    return None if found is None else found[0]


def find_layout_and_spans(view: ModelView) -> tuple[Layout, dict[str, range]] | None:
    """:func:`find_layout`, plus the span of every module with a role (read on the way, so the recipes
    need not look them up again)."""
    shapes, ranks = view.shapes, view.ranks
    if ranks.count(4) < 2:
        return None  # every block of at least two stages starts with a depthwise kernel (vit, swin: one 4-D)
    fours = list(positions_of(ranks, 4))  # models hold few 4-D parameters
    kernels = [i for i in fours if (shape := shapes[i])[1] == 1 and (shape[2] >= 2 or shape[3] >= 2)]
    if len(kernels) < 2:
        return None
    stages = _block_containers(view, kernels)
    if len(stages) < 2:
        return None
    widths = [stage.width for stage in stages]
    if any(map(lt, widths[1:], widths[:-1])):
        return None  # not one backbone's stages in depth order

    span_of = view.span
    paths = [stage.path for stage in stages]
    block_spans = [stage.span for stage in stages]
    first_block = block_spans[0].start
    last_block = block_spans[-1].stop - 1

    # Downsample layers. A stage wrapper (timm ``stages.S``, transformers ``stages.S``) holds its blocks
    # and its downsample; otherwise (torchvision, the research repo) the downsample is the convolution
    # that maps the previous stage's width to this one's, found by shape.
    downsample: dict[int, str] = {}
    spans: dict[str, range] = {}
    taken: list[range] = list(block_spans)
    unwrapped: list[int] = []
    for s, path in enumerate(paths):
        parent = _parent(path)
        # No other stage under the parent (the stages are disjoint, so none is the parent itself). The
        # stages are in tree order, so stages under one module are neighbours: asking both suffices.
        prefix = parent + "."
        alone = bool(parent) and not (
            (s > 0 and paths[s - 1].startswith(prefix)) or (s + 1 < len(paths) and paths[s + 1].startswith(prefix))
        )
        if path and alone:
            local = path[len(prefix) :]
            kids = _child_names(view.module(parent))
            if kids != [local]:
                # Only this stage's blocks lie under the parent, so anything more there is not a block.
                if len(span_of(parent)) > len(block_spans[s]):
                    for name in kids:
                        if name != local and (kid_span := span_of(kid := prefix + name)):
                            downsample[s] = kid  # the single non-block child of the stage wrapper
                            spans[kid] = kid_span
                            taken.append(kid_span)
                            break
                continue
        unwrapped.append(s)
    # Spatial convolutions outside the blocks: the stem's and the downsample layers'.
    inside: set[int] = set()
    for r in taken:
        inside.update(fours[bisect.bisect_left(fours, r.start) : bisect.bisect_left(fours, r.stop)])
    convs = [
        i for i in fours
        if i not in inside and _matrix_like(shape := shapes[i]) and (shape[2] >= 2 or shape[3] >= 2)
    ]
    ds_convs: dict[int, int] = {}
    for s in unwrapped:
        if s == 0:
            continue
        want = (widths[s], widths[s - 1])
        used = set(ds_convs.values())
        match = next((i for i in convs if i < last_block and i not in used and shapes[i][:2] == want), None)
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
            (i for i in stem_pool if i in span and i < first_block and shapes[i][0] == widths[0]), None
        )
        if stem_conv is not None:
            break
        if not root:
            return None
        root = _parent(root)

    names = view.names
    conv_params = [*ds_convs.values(), stem_conv]
    blocks_at = ([r.start for r in block_spans], [r.stop for r in block_spans])  # in order, disjoint
    for s, conv in ds_convs.items():
        avoid = {c for c in conv_params if c != conv}
        downsample[s] = _largest_part(view, _parent(names[conv]), root, blocks_at, avoid)
    for s in range(1, len(stages)):
        if s not in downsample and widths[s] != widths[s - 1]:
            return None  # the width changes but nothing maps it: not a ConvNeXt we understand
    stem = _largest_part(view, _parent(names[stem_conv]), root, blocks_at, set(ds_convs.values()))

    roles: dict[str, Role] = {stem: ("stem",)}
    for s, path in downsample.items():
        roles[path] = ("downsample", s)
    # The parameters of these modules have a role: the search for the rest of the stem jumps over them.
    jumps: dict[int, int] = {}
    for path in roles:
        span = spans[path] = spans.get(path) or span_of(path)
        if path and span:
            jumps[span.start] = max(span.stop, jumps.get(span.start, 0))
    for s, stage in enumerate(stages):
        for b, block in enumerate(stage.blocks):
            roles[block] = ("block", s, b)
        spans.update(zip(stage.blocks, stage.block_spans, strict=True))
    # Whatever the backbone registers before its first block and is not a downsample belongs to the stem,
    # also when the stem is split into sibling modules (timm's ``features_only`` gives ``stem_0``, ``stem_1``).
    span = span_of(root)
    i, end = span.start, min(span.stop, first_block)
    while i < end:
        if i in jumps:
            i = jumps[i]
            continue
        owner = _parent(names[i])
        if owner != root and _role_of(roles, names[i]) is None:
            roles[owner] = ("stem",)
        i += 1
    norm_pre = f"{root}.{NORM_PRE}" if root else NORM_PRE
    if span_of(norm_pre):
        roles[norm_pre] = (NORM_PRE,)
    for path in roles.keys() - spans.keys():
        spans[path] = span_of(path)
    layout = Layout(
        root=root,
        stem=stem,
        depths=tuple([len(stage.blocks) for stage in stages]),
        widths=tuple(widths),
        roles=roles,
    )
    return layout, spans
