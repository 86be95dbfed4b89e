"""Find a ConvNeXt inside any model by its structure: module tree, child names and parameter shapes.

Every library spells ConvNeXt differently (timm ``stages.S.blocks.B``, torchvision ``features.(2S+1).B``,
transformers ``encoder.stages.S.layers.B``, the research repo ``stages.S.B`` with the downsample layers
listed before any stage), and a detector or segmenter nests it under a prefix of its own. What they share
is the block: a depthwise ``k x k`` convolution on ``C`` channels, then a pointwise expansion ``C -> E``
and a projection ``E -> C`` (as ``Linear`` or ``1x1`` convolutions), plus vectors (norm, layer scale, GRN,
biases). That signature, read from shapes alone, finds the stages; the stem and the downsample layers are
then found by their place relative to the stages and by the channel counts they connect. No model name
and no depth table is consulted, so any depth and any wrapper works.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from layerdecay import ModelView

__all__ = ["Layout", "Role", "find_layout"]

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
    return sum(d > 1 for d in shape) >= 2


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


class _Tree:
    """Per-module parameter indices (subtree, registration order), built once from the view."""

    def __init__(self, view: ModelView) -> None:
        self.view = view
        self.shapes = [tuple(view.params[i].shape) for i in range(len(view))]
        self.subtree: dict[str, list[int]] = {}
        for i, name in enumerate(view.names):
            path = _parent(name)
            while True:
                self.subtree.setdefault(path, []).append(i)
                if not path:
                    break
                path = _parent(path)

    def weights(self, path: str) -> list[tuple[int, ...]]:
        return [self.shapes[i] for i in self.subtree.get(path, ()) if _matrix_like(self.shapes[i])]

    def children(self, path: str) -> list[str]:
        module = self.view.modules.get(path)
        if module is None:
            return []
        prefix = path + "." if path else ""
        return [prefix + name for name, child in module._modules.items() if child is not None]


def _block_containers(tree: _Tree) -> list[tuple[str, list[str], int]]:
    """Innermost modules whose children are all ConvNeXt blocks of one width: (path, blocks, width)."""
    found: list[tuple[str, list[str], int]] = []
    for path in tree.view.modules:
        if path not in tree.subtree:
            continue
        kids = tree.children(path)
        if not kids or any(not k.rpartition(".")[2].isdigit() for k in kids):
            continue
        widths = {_block_width(tree.weights(k)) for k in kids}
        width = widths.pop() if len(widths) == 1 else None
        if width is not None:
            found.append((path, kids, width))
    # A depth-1 stage can itself look like a block: keep only the innermost containers.
    paths = [p for p, _, _ in found]
    return [c for c in found if not any(o != c[0] and _is_within(o, c[0]) for o in paths)]


def _largest_part(tree: _Tree, start: str, stop: str, avoid: list[int]) -> str:
    """The largest ancestor of ``start`` (below ``stop``) whose subtree holds none of the ``avoid`` params."""
    avoided = set(avoid)
    best = start
    path = start
    while path and path != stop:
        if avoided.intersection(tree.subtree.get(path, ())):
            break
        best = path
        path = _parent(path)
    return best


def find_layout(view: ModelView) -> Layout | None:
    """The ConvNeXt in ``view``'s model, or None when there is none (or it is not laid out as one)."""
    tree = _Tree(view)
    containers = _block_containers(tree)
    if len(containers) < 2:
        return None
    widths = [w for _, _, w in containers]
    if any(b < a for a, b in itertools.pairwise(widths)):
        return None  # not one backbone's stages in depth order

    block_params = [i for path, _, _ in containers for i in tree.subtree[path]]
    first_block = min(block_params)
    in_blocks = set(block_params)

    # Downsample layers. A stage wrapper (timm ``stages.S``, transformers ``stages.S``) holds its blocks
    # and its downsample; otherwise (torchvision, the research repo) the downsample is the convolution
    # that maps the previous stage's width to this one's, found by shape.
    downsample: dict[int, str] = {}
    taken: set[int] = set(in_blocks)
    unwrapped: list[int] = []
    for s, (path, _, _) in enumerate(containers):
        parent = _parent(path)
        others = [c for c, _, _ in containers if c != path and _is_within(c, parent)]
        if path and not others and tree.children(parent) != [path]:
            extra = [i for i in tree.subtree.get(parent, ()) if i not in in_blocks]
            if extra:
                for kid in tree.children(parent):
                    if kid != path and kid in tree.subtree:
                        downsample[s] = kid  # the single non-block child of the stage wrapper
                        taken.update(tree.subtree[kid])
                        break
            continue
        unwrapped.append(s)
    # Spatial convolutions outside the blocks: the stem's and the downsample layers'.
    convs = [
        i for i, shape in enumerate(tree.shapes)
        if len(shape) == 4 and i not in taken and _matrix_like(shape) and max(shape[2], shape[3]) >= 2
    ]
    last_block = max(block_params)
    ds_convs: dict[int, int] = {}
    for s in unwrapped:
        if s == 0:
            continue
        want = (widths[s], widths[s - 1])
        used = set(ds_convs.values())
        match = next((i for i in convs if i < last_block and i not in used and tree.shapes[i][:2] == want), None)
        if match is not None:
            ds_convs[s] = match
    stem_pool = set(convs).difference(ds_convs.values())

    # The stem: a strided convolution producing stage 0's width, registered before the first block,
    # searched from the stages' common ancestor upward (the wrapper around a nested backbone comes last).
    lca = containers[0][0]
    for path, _, _ in containers[1:]:
        while not _is_within(path, lca):
            lca = _parent(lca)
    stem_conv: int | None = None
    root = lca
    while True:
        candidates = [
            i for i in tree.subtree.get(root, ())
            if i < first_block and i in stem_pool and tree.shapes[i][0] == widths[0]
        ]
        if candidates:
            stem_conv = candidates[0]
            break
        if not root:
            return None
        root = _parent(root)

    conv_params = [*ds_convs.values(), stem_conv]
    for s, conv in ds_convs.items():
        avoid = [*block_params, *(c for c in conv_params if c != conv)]
        downsample[s] = _largest_part(tree, _parent(view.names[conv]), root, avoid)
    for s in range(1, len(containers)):
        if s not in downsample and widths[s] != widths[s - 1]:
            return None  # the width changes but nothing maps it: not a ConvNeXt we understand
    stem = _largest_part(tree, _parent(view.names[stem_conv]), root, block_params + list(ds_convs.values()))

    roles: dict[str, Role] = {stem: ("stem",)}
    for s, path in downsample.items():
        roles[path] = ("downsample", s)
    for s, (_, blocks, _) in enumerate(containers):
        for b, block in enumerate(blocks):
            roles[block] = ("block", s, b)
    # Whatever the backbone registers before its first block and is not a downsample belongs to the stem,
    # also when the stem is split into sibling modules (timm's ``features_only`` gives ``stem_0``, ``stem_1``).
    for i in tree.subtree.get(root, ()):
        if i >= first_block:
            break
        owner = _parent(view.names[i])
        if owner != root and _role_of(roles, view.names[i]) is None:
            roles[owner] = ("stem",)
    norm_pre = f"{root}.{NORM_PRE}" if root else NORM_PRE
    if norm_pre in tree.subtree:
        roles[norm_pre] = (NORM_PRE,)
    return Layout(
        root=root,
        stem=stem,
        depths=tuple(len(blocks) for _, blocks, _ in containers),
        widths=tuple(widths),
        roles=roles,
    )
