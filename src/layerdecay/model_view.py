"""One walk over a model: normalized parameter names, owning modules, and the unwrapped root.

Wrappers (DDP, DataParallel, ``torch.compile``, FSDP1, activation checkpointing) add a path component
to every name below them.  Every rule in layerdecay matches normalized names, so a wrapped model gets
exactly the plan of the bare model, and saved optimizer state carries names that survive re-wrapping.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from operator import attrgetter
from typing import Any, NamedTuple

import torch
from torch import nn

from layerdecay.errors import ConfigError

__all__ = ["ModelView", "positions_of", "strip_wrapper_prefixes", "unwrap"]

# Child attributes that only ever hold the wrapped module.
_ALWAYS_WRAPPER_CHILDREN = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
# ``module`` is a wrapper child when its parent is DDP-like: it holds nothing but that one child.
_MODULE_CHILD = "module"
_WRAPPER_COMPONENTS = _ALWAYS_WRAPPER_CHILDREN | {_MODULE_CHILD}
_SHAPE = attrgetter("shape")
_NDIM = attrgetter("ndim")
_EMPTY = range(0)


def _wrapped_child(module: nn.Module) -> nn.Module | None:
    """The module that ``module`` merely wraps, or None when ``module`` is not a wrapper."""
    children = module._modules
    if len(children) != 1:
        return None
    (child_name, child), = children.items()
    if child is None:
        return None
    if child_name in _ALWAYS_WRAPPER_CHILDREN:
        return child
    if child_name == _MODULE_CHILD and not any(p is not None for p in module._parameters.values()):
        return child
    return None


def _flat_view_shapes(module: nn.Module, into: dict[int, torch.Size]) -> None:
    """Record the real shapes behind FSDP1 ``use_orig_params=True`` views (each rank sees flat 1-D shards).

    FSDP1 offers no public way to ask; its flat parameter keeps the originals and their shapes side by side.
    Read defensively: on any other layout nothing is recorded and shapes are taken from the tensors.
    """
    flat = getattr(getattr(module, "_handle", None), "flat_param", None)
    originals = getattr(flat, "_params", None)
    shapes = getattr(flat, "_shapes", None)
    if originals is not None and shapes is not None and len(originals) == len(shapes):
        for param, shape in zip(originals, shapes, strict=True):
            into[id(param)] = torch.Size(shape)


def unwrap(model: nn.Module) -> nn.Module:
    """Peel wrappers off ``model`` (DDP, DataParallel, compile, FSDP1, checkpoint wrappers, nested)."""
    while (inner := _wrapped_child(model)) is not None:
        model = inner
    return model


def strip_wrapper_prefixes(name: str) -> str:
    """Drop wrapper components from a dotted name given as text (for names read from a checkpoint).

    ``module`` is dropped only where it leads the name, since inside a model it can be a real attribute;
    the private wrapper attributes are dropped anywhere.
    """
    parts = name.split(".")
    lead = 0
    while lead < len(parts) - 1 and parts[lead] in _WRAPPER_COMPONENTS:
        lead += 1
    return ".".join(p for p in parts[lead:] if p not in _ALWAYS_WRAPPER_CHILDREN)


def positions_of(items: Sequence[Any], value: Any) -> Iterator[int]:
    """Every index of ``value`` in ``items``, by C-level searches (for the few hits in a long sequence)."""
    at = -1
    try:
        while True:
            at = items.index(value, at + 1)
            yield at
    except ValueError:
        return


def _subclass_test(classes: type | tuple[type, ...]) -> Callable[[type], bool]:
    def test(cls: type) -> bool:
        return issubclass(cls, classes)
    return test


class Walk(NamedTuple):
    """What a walk lists; the first four lists are aligned with ``names``, the next three with one another."""

    names: list[str]
    local_names: list[str]
    params: list[torch.Tensor]
    owners: list[nn.Module]
    paths: list[str]  # of each module, in tree order
    modules: list[nn.Module]
    types: list[type]
    spans: dict[str, range]
    flat_shapes: dict[int, torch.Size]
    # Whether every module's ``named_parameters()`` lists what its span lists, under the same names: no
    # parameter listed twice and no wrapper peeled below the root.
    matches_torch_listing: bool


def _walk_unshared(model: nn.Module) -> Walk | None:
    """The walk for the usual model, in which no module and no parameter appears twice.

    The hot loop of every plan, leaner than ``named_parameters()``: leaf children (no submodules: Linear,
    LayerNorm, Dropout, ...) are most modules and are handled inline, and nothing is deduplicated on the
    way. Sharing is detected once at the end (by reference counts first, see :func:`_held_often`, and by
    identities where those allow it); then (and for a module tree with a cycle) it answers None and the caller
    takes :func:`_walk`.
    """
    names: list[str] = []
    local_names: list[str] = []
    params: list[torch.Tensor] = []
    owners: list[nn.Module] = []
    # Lists, not a dict by path: at 88k modules (depth 4000) filling a dict that large while the model streams
    # through the caches made the walk 1.12x slower than lists do. ModelView builds the dict when it is read.
    paths: list[str] = []
    modules: list[nn.Module] = []
    types: list[type] = []  # read while each module is at hand: a later pass over many modules misses the cache
    spans: dict[str, range] = {}
    flat_shapes: dict[int, torch.Size] = {}
    add_name, add_local, add_param, add_owner = names.append, local_names.append, params.append, owners.append
    add_path, add_module, add_type, span = paths.append, modules.append, types.append, range
    bare: list[nn.Module] = []  # the modules with no parameter under them
    add_bare = bare.append
    wrapper_free = _ALWAYS_WRAPPER_CHILDREN.isdisjoint
    inner_wrappers: list[str] = []  # wrappers below the root, whose component the names leave out

    def visit(prefix: str, module: nn.Module) -> None:
        children = module._modules
        if len(children) == 1:
            inner = _wrapped_child(module)
            if inner is not None:
                if paths:
                    inner_wrappers.append(prefix)
                if "_fsdp_wrapped_module" in children:
                    _flat_view_shapes(module, flat_shapes)
                visit(prefix, inner)
                return
        path = prefix[:-1]
        add_path(path)
        add_module(module)
        add_type(type(module))
        start = len(names)
        for pname, param in module._parameters.items():
            if param is not None:
                add_name(prefix + pname)
                add_local(pname)
                add_param(param)
                add_owner(module)
        plain = wrapper_free(children)
        for cname, child in children.items():
            if child is None:
                continue
            if child._modules or not (plain or cname not in _ALWAYS_WRAPPER_CHILDREN):
                if cname in _ALWAYS_WRAPPER_CHILDREN:
                    inner_wrappers.append(prefix)
                    visit(prefix, child)
                else:
                    visit(prefix + cname + ".", child)
                continue
            child_path = prefix + cname
            add_path(child_path)
            add_module(child)
            add_type(type(child))
            child_params = child._parameters
            if child_params:
                child_start = len(names)
                child_prefix = child_path + "."
                for pname, param in child_params.items():
                    if param is not None:
                        add_name(child_prefix + pname)
                        add_local(pname)
                        add_param(param)
                        add_owner(child)
                if len(names) > child_start:
                    spans[child_path] = span(child_start, len(names))
                    continue
            add_bare(child)
        if len(names) > start:
            spans[path] = span(start, len(names))
        else:
            add_bare(module)

    try:
        visit("", model)
    except RecursionError:
        return None
    finally:
        # ``visit`` calls itself through its closure: a reference cycle that would keep everything the walk
        # built alive until the cyclic collector ran. Unbinding it lets reference counting free it now.
        visit = None  # type: ignore[assignment]
    # A module listed twice lists every parameter under it twice: only the modules without parameters need
    # a check of their own.
    maybe_shared = _held_often(params, 2)
    if len(set(map(id, maybe_shared))) != len(maybe_shared) or not _all_distinct(_held_often(bare, 3)):
        return None
    return Walk(names, local_names, params, owners, paths, modules, types, spans, flat_shapes, not inner_wrappers)


_refcount = getattr(sys, "getrefcount", None)  # CPython's; elsewhere every object is compared


def _held_often(objects: list[Any], holders: int) -> list[Any]:
    """The objects of ``objects`` that may appear in it twice, given that each appearance is held by
    ``holders`` references the walk knows of (the entry of its parent's dict, the walk's own lists).

    Comparing identities means a hash table as large as the model, whose random accesses miss the caches on a
    deep model (a 48k-entry set cost 13 ms at depth 4000, 23 times its cost at depth 400). An object listed
    twice is held at least ``2 * holders`` times, so objects held fewer times (the usual case: a fresh model's
    parameters are held by their module and the walk alone) are told apart by their reference counts.
    """
    if _refcount is None or not objects:
        return objects
    # The count may or may not include the call's own reference to its argument: below 2 * holders either way.
    twice = 2 * holders
    if max(map(_refcount, objects)) < twice:
        return []
    return [obj for obj in objects if _refcount(obj) >= twice]


def _all_distinct(modules: Collection[nn.Module]) -> bool:
    """Whether no module appears twice. Modules hash by identity unless their class says otherwise, and a set
    of them is then built without an int per module (four times faster than by ``id``). A class whose own
    equality makes two of its modules equal only sends the walk the careful way; one whose hash or equality
    fails is counted by ``id``."""
    try:
        return len(set(modules)) == len(modules)
    except Exception:
        return len(set(map(id, modules))) == len(modules)


def _walk(model: nn.Module) -> Walk:
    """The walk for models that share modules or parameters: each is listed once, where first seen,
    as ``named_parameters()`` and ``named_modules()`` do."""
    names: list[str] = []
    local_names: list[str] = []
    params: list[torch.Tensor] = []
    owners: list[nn.Module] = []
    paths: list[str] = []
    modules: list[nn.Module] = []
    types: list[type] = []
    spans: dict[str, range] = {}
    flat_shapes: dict[int, torch.Size] = {}
    seen_params: set[int] = set()
    seen_modules: set[int] = set()
    # An explicit stack: a module tree with a cycle is walked like any other (each module once).
    stack: list[tuple[str, nn.Module | None]] = [("", model)]
    open_spans: list[tuple[str, int]] = []
    while stack:
        prefix, module = stack.pop()
        if module is None:  # the end of a module's subtree: close its span
            path, start = open_spans.pop()
            if len(names) > start:
                spans[path] = range(start, len(names))
            continue
        if id(module) in seen_modules:
            continue
        seen_modules.add(id(module))
        inner = _wrapped_child(module)
        if inner is not None:
            if "_fsdp_wrapped_module" in module._modules:
                _flat_view_shapes(module, flat_shapes)
            stack.append((prefix, inner))
            continue
        path = prefix[:-1]
        paths.append(path)
        modules.append(module)
        types.append(type(module))
        open_spans.append((path, len(names)))
        for pname, param in module._parameters.items():
            if param is None or id(param) in seen_params:
                continue
            seen_params.add(id(param))
            names.append(prefix + pname)
            local_names.append(pname)
            params.append(param)
            owners.append(module)
        stack.append((prefix, None))
        children = [(prefix if cname in _ALWAYS_WRAPPER_CHILDREN else prefix + cname + ".", child)
                    for cname, child in module._modules.items() if child is not None]
        stack.extend(reversed(children))
    return Walk(names, local_names, params, owners, paths, modules, types, spans, flat_shapes, False)


class ModelView:
    """What plugins see of a model: built once per plan, read by every hook.

    Attributes:
        model: The unwrapped root module (``model.module``/``_orig_mod``/... peeled).
        names: Normalized names of every parameter, frozen ones included, in registration order,
            each shared (tied) parameter once.
        local_names: Each parameter's own name in its module (the last component of its name: ``weight``,
            ``cls_token``), aligned with ``names``.
        params: The parameters, aligned with ``names``.
        owners: The module that owns each parameter, aligned with ``names``.
        modules: Normalized module path -> module, for every module under the root (wrappers left out), in tree
            order; built on first read, since a deep model's costs a tenth of its walk and most plans need none.
            Use :meth:`module` for one module, :meth:`span` for the parameters under a module.
        module_types: The class of each module, aligned with ``modules`` (its insertion order): finding
            modules by type is a search of this tuple rather than a pass over the modules
            (:meth:`modules_of_type`), and :meth:`modules_at` fetches what a search found.
        matches_torch_listing: Whether each module's own ``named_parameters()`` lists its :meth:`span` under the
            same names (relative to the module): no wrapper below the root, nothing listed twice.
        true_shapes: ``id(param)`` -> real shape, for the parameters whose tensor shows something else (FSDP1
            ``use_orig_params=True`` flat views); empty for ordinary models. :meth:`shape_of` reads it.
        cache: Scratch space for plugins, so that ``layerdecay_num_layers`` and ``layerdecay_layer_id``
            can share one analysis of the model. Key it by your plugin's name.
    """

    __slots__ = ("_index", "_module_list", "_module_paths", "_modules", "_ranks", "_shapes", "_spans", "cache",
                 "local_names", "matches_torch_listing", "model", "module_types", "names", "owners", "params",
                 "true_shapes")

    def __init__(self, model: nn.Module) -> None:
        walk = _walk_unshared(model)
        if walk is None:  # a module or parameter is shared (or the tree has a cycle): the careful walk
            walk = _walk(model)
        names, local_names, params, owners, paths, modules, types, spans, flat_shapes, matches_torch_listing = walk
        self.model = unwrap(model)
        self.names: tuple[str, ...] = tuple(names)
        self.local_names: tuple[str, ...] = tuple(local_names)
        self.params: tuple[torch.Tensor, ...] = tuple(params)
        self.owners: tuple[nn.Module, ...] = tuple(owners)
        self._module_paths = paths
        self._module_list = modules
        self._modules: dict[str, nn.Module] | None = None
        self.module_types: tuple[type, ...] = tuple(types)
        self.cache: dict[str, Any] = {}
        self._spans = spans
        self.matches_torch_listing = matches_torch_listing
        self.true_shapes = flat_shapes
        self._index: dict[str, int] | None = None
        self._shapes: tuple[torch.Size, ...] | None = None
        self._ranks: Sequence[int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Position of the parameter called ``name`` (normalized) in ``names``."""
        if self._index is None:
            self._index = {n: i for i, n in enumerate(self.names)}
        return self._index[name]

    @property
    def modules(self) -> dict[str, nn.Module]:
        """Normalized module path -> module (see the class's attributes), built on first read."""
        if self._modules is None:
            self._modules = dict(zip(self._module_paths, self._module_list, strict=True))
        return self._modules

    def module(self, path: str) -> nn.Module | None:
        """The module at normalized ``path`` ('' is the root), or None.

        Without wrappers or sharing below the root, a normalized path is the chain of child names from the root,
        so a lookup follows it and needs no dict of every module (see :attr:`modules`).
        """
        if self._modules is not None or not self.matches_torch_listing:
            return self.modules.get(path)
        module = self.model
        for part in path.split(".") if path else ():
            child = module._modules.get(part)
            if child is None:
                return None
            module = child
        return module

    def modules_at(self, positions: Iterable[int]) -> list[tuple[str, nn.Module]]:
        """``(path, module)`` of the modules at ``positions`` of :attr:`module_types`, in ascending order.

        The modules are kept in a list aligned with ``module_types``, so the few modules found by a search of
        it (a model's root class, its containers) cost no pass over a deep model's others.
        """
        paths, modules = self._module_paths, self._module_list
        return [(paths[at], modules[at]) for at in sorted(positions)]

    def modules_of_type(self, kind: type | tuple[type, ...] | Callable[[type], bool]) -> list[tuple[str, nn.Module]]:
        """``(path, module)`` of every module whose class is ``kind`` or a subclass (a class or a tuple of
        classes, as for ``isinstance``), or whose class ``kind`` accepts when it is a function of the class;
        in tree order.

        Each distinct class is asked once and its modules are found by C-level searches of
        :attr:`module_types`, so finding a deep model's few containers costs no Python step per module.
        """
        accepts: Callable[[type], bool]
        if isinstance(kind, type) or (isinstance(kind, tuple) and all(isinstance(k, type) for k in kind)):
            accepts = _subclass_test(kind)
        elif callable(kind) and not isinstance(kind, tuple):
            accepts = kind
        else:
            raise ConfigError(f"modules_of_type takes a class, a tuple of classes or a function of the class; "
                              f"got {kind!r} ({type(kind).__name__}).")
        types = self.module_types
        return self.modules_at(at for cls in set(types) if accepts(cls) for at in positions_of(types, cls))

    def find_modules(self, predicate: Callable[[str, nn.Module], bool]) -> Iterator[tuple[str, nn.Module]]:
        """Modules (path, module) for which ``predicate(path, module)`` holds, in tree order."""
        return ((path, m) for path, m in self.modules.items() if predicate(path, m))

    def span(self, path: str) -> range:
        """Positions in ``names``/``params`` of the parameters under the module at ``path`` ('' = all).

        Parameters are listed depth-first, so a module's parameters (its own, then its children's) are one
        contiguous run: structure questions ("how many weights does this block hold?") cost a slice, not a
        walk of the subtree. A shared (tied) parameter counts where it was first seen. Empty for a module
        without parameters, or an unknown path.
        """
        return self._spans.get(path, _EMPTY)

    def named_parameters_of(self, path: str) -> list[tuple[str, torch.Tensor]] | None:
        """What ``named_parameters()`` of the module at ``path`` lists (names relative to that module), read
        off the walk; None where the walk's names are not the module's own (a wrapper below the root, or a
        module or parameter that appears twice), or for an unknown path."""
        if not self.matches_torch_listing or (path not in self._spans and path not in self.modules):
            return None
        at = self.span(path)
        names, params = self.names[at.start:at.stop], self.params[at.start:at.stop]
        if path:
            cut = len(path) + 1
            names = tuple(name[cut:] for name in names)
        return list(zip(names, params, strict=True))

    def shape_of(self, param: torch.Tensor) -> torch.Size:
        """The real, full shape of a parameter: DTensor shards report their global shape, and FSDP1 flat views
        are looked up in :attr:`true_shapes`."""
        return self.true_shapes.get(id(param), param.shape) if self.true_shapes else param.shape

    @property
    def shapes(self) -> tuple[torch.Size, ...]:
        """The real, full shape of every parameter (see :meth:`shape_of`), aligned with ``names``.

        Read once per plan and shared by every plugin, so rejecting a model by its shapes costs each plugin
        a pass over a tuple rather than a property read per tensor.
        """
        if self._shapes is None:
            shapes = tuple(map(_SHAPE, self.params))
            if self.true_shapes:
                true = self.true_shapes
                shapes = tuple(true.get(id(p), s) for p, s in zip(self.params, shapes, strict=True))
            self._shapes = shapes
        return self._shapes

    @property
    def ranks(self) -> Sequence[int]:
        """The rank of every parameter (the length of its real shape), aligned with ``names``; read once per
        plan and shared, like :attr:`shapes`.

        A ``bytes`` object when every rank is below 256 (the usual case), so that counting and finding ranks
        are C-level scans (``ranks.count(4)``, :func:`positions_of`); a tuple otherwise. Taken from the shapes
        when they were read, else from each tensor's ``ndim``, which costs less than its shape.
        """
        if self._ranks is None:
            from_shapes = self._shapes is not None or self.true_shapes
            ranks = tuple(map(len, self.shapes) if from_shapes else map(_NDIM, self.params))
            try:
                self._ranks = bytes(ranks)
            except ValueError:  # a rank above 255
                self._ranks = ranks
        return self._ranks

    def shape(self, name: str) -> tuple[int, ...]:
        """The real, full shape of the parameter called ``name`` (see :meth:`shape_of`)."""
        return tuple(self.shape_of(self.params[self.index(name)]))
