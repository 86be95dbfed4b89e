"""Weight-decay decisions: the :class:`Decision` type and the core's "weight decay by meaning" policy.

Every recipe in the field means to exclude the same things from weight decay: biases, normalization
weights, layer scales, tokens, position embeddings and relative-position tables. Libraries give these
parameters different shapes (torchvision's layer scale is ``[C,1,1]``, HF's GRN is 4-D, tokens are 3-D),
so a rule by ``ndim`` alone treats the same parameter differently per library. This policy decides by
meaning: the owning module's type first, then the parameter's name, then the model's own
``no_weight_decay()`` lists, and ``ndim <= 1`` only for whatever is left.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import compress, repeat
from operator import itemgetter
from typing import Any, NamedTuple

import torch
from torch import nn

from layerdecay.errors import ModelError
from layerdecay.model_view import ModelView

__all__ = ["Decision", "MeaningPolicy", "Policy", "meaning_policy", "is_norm_module"]

_LAST = itemgetter(2)


class Decision(NamedTuple):
    """A policy's answer for one parameter; None in a field means "no opinion".

    Attributes:
        weight_decay: True to apply weight decay, False to exclude the parameter from it.
        reason: Why, in a few words; shown in the plan next to the decision.
        lr_mult: Extra learning-rate multiplier on top of the layer's scale (e.g. 10.0 for a new head).
        wd_mult: Multiplier on the weight decay value for this parameter.
        exclude: True to leave the parameter out of the optimizer entirely.
    """

    weight_decay: bool | None = None
    reason: str | None = None
    lr_mult: float | None = None
    wd_mult: float | None = None
    exclude: bool | None = None


Policy = Callable[[str, torch.Tensor, nn.Module], "Decision | None"]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)

# Parameter names (the last component) that say what the parameter is, whatever its shape.
_LAYER_SCALE_NAMES = frozenset(
    {"gamma", "gamma_1", "gamma_2", "layer_scale", "layer_scale_parameter", "lambda1", "lambda2"}
)
_TOKEN_SUFFIXES = ("_token", "_tokens")
_TOKEN_NAMES = frozenset({"token", "tokens", "class_token", "cls_token", "register_tokens"})
_POSITION_NAMES = frozenset(
    {"pos_embed", "pos_embedding", "position_embeddings", "position_embedding", "absolute_pos_embed"}
)
# Substrings of the full name that mark relative-position parameters (tables, Swin-v2's cpb MLP). Each one
# costs a search of the joined names, so none holds another (``relative_position`` finds the
# ``relative_position_bias_table``s).
_RELATIVE_POSITION_MARKERS = (
    "rel_pos",
    "relative_position",
    "cpb_mlp",
    "continuous_position_bias_mlp",
)

NORM_WEIGHT = "norm weight"
BIAS = Decision(weight_decay=False, reason="bias")
LAYER_SCALE = Decision(weight_decay=False, reason="layer scale")
TOKEN = Decision(weight_decay=False, reason="token")
POSITION = Decision(weight_decay=False, reason="position embedding")
RELATIVE_POSITION = Decision(weight_decay=False, reason="relative position")
LOGIT_SCALE = Decision(weight_decay=False, reason="attention logit scale")
MODEL_LIST = Decision(weight_decay=False, reason="model.no_weight_decay()")
ONE_D = Decision(weight_decay=False, reason="1-D tensor")
WEIGHT = Decision(weight_decay=True, reason="weight")


def is_norm_module(module_type: type) -> bool:
    """Whether a module class is a normalization layer: torch's norms, or a class whose name says so."""
    if issubclass(module_type, _NORM_TYPES):
        return True
    name = module_type.__name__
    return "Norm" in name or name.endswith("GRN")


@functools.lru_cache(maxsize=4096)
def _decision_by_local_name(local: str) -> Decision | None:
    """What a parameter's own name (the last component) settles, whatever its module: a pure function of
    the name, worked out once per process."""
    if local == "bias" or local.endswith("_bias"):
        return BIAS
    if local in _LAYER_SCALE_NAMES or local.startswith("lambda_"):
        return LAYER_SCALE
    if local in _TOKEN_NAMES or local.endswith(_TOKEN_SUFFIXES):
        return TOKEN
    if local in _POSITION_NAMES:
        return POSITION
    if local == "logit_scale":
        return LOGIT_SCALE
    return None


@functools.lru_cache(maxsize=4096)
def _lists_of(module_type: type) -> tuple[bool, bool]:
    """Whether a module class defines ``no_weight_decay()`` and ``no_weight_decay_keywords()``; asked once per
    class and process (a failed class-attribute lookup costs an exception inside Python)."""
    return (callable(getattr(module_type, "no_weight_decay", None)),
            callable(getattr(module_type, "no_weight_decay_keywords", None)))


def _defines_lists(module_type: type) -> bool:
    return any(_lists_of(module_type))


def _model_no_weight_decay(view: ModelView) -> tuple[frozenset[str], tuple[str, ...]]:
    """Names from every ``no_weight_decay()`` and keywords from ``no_weight_decay_keywords()`` in the tree.

    A module's own lists name parameters relative to that module, so each is prefixed with the module's
    path: a timm backbone nested in a detector, or under wrappers, still gets its exclusions.
    """
    names: set[str] = set()
    keywords: list[str] = []
    plan_name_of: dict[int, str] | None = None
    # Which classes define the lists is asked once per class (a deep model has many modules, few classes);
    # their modules are asked in tree order.
    for path, module in view.modules_of_type(_defines_lists):
        prefix = path + "." if path else ""
        has_names, has_keywords = _lists_of(type(module))
        twin = _twin(view, path, module)
        try:
            listed, more = _read_lists(module if twin is None else twin, path, has_names, has_keywords)
        except ModelError:
            if twin is None:
                raise
            # The twin is a shortcut and must never change an outcome: the module itself has the last word.
            listed, more = _read_lists(module, path, has_names, has_keywords)
        finally:
            if twin is not None:
                del _TWIN_ANSWERS[id(twin)]
        keywords.extend(more)
        if view.matches_torch_listing:
            names.update(prefix + n for n in listed)
            continue
        # A list made from the module's own listing spells out the wrappers inside it (blocks wrapped for
        # activation checkpointing, say) and a tied parameter under its name there: such names are found
        # by the tensor they name. Names the listing does not know are taken as written.
        if plan_name_of is None:
            plan_name_of = {id(p): n for n, p in zip(view.names, view.params, strict=True)}
        own = dict(nn.Module.named_parameters(module)) if listed else {}
        names.update(plan_name_of.get(id(own[n]), prefix + n) if n in own else prefix + n for n in listed)
    return frozenset(names), tuple(keywords)


def _where(path: str) -> str:
    return f"the module at {path!r}" if path else "the root"


def _asked(module: nn.Module, path: str, method: str) -> Any:
    """The answer of the module's own ``no_weight_decay()`` or ``no_weight_decay_keywords()``; a failure is the
    model's, and is reported as such rather than as the core policy's."""
    try:
        return getattr(module, method)()
    except Exception as exc:
        raise ModelError(f"{type(module).__name__}.{method}() ({_where(path)}) raised {type(exc).__name__}: {exc}. "
                         f"Every module that defines it is asked for its list while the plan is made."
                         ) from exc


def _read_lists(module: nn.Module, path: str, has_names: bool, has_keywords: bool) -> tuple[list[str], list[str]]:
    listed = _strings(module, path, "no_weight_decay", _NAMES_EXAMPLE) if has_names else []
    keywords = _strings(module, path, "no_weight_decay_keywords", _KEYWORDS_EXAMPLE) if has_keywords else []
    return listed, keywords


_NAMES_EXAMPLE = "parameter names relative to that module, such as {'pos_embed', 'cls_token'}"
_KEYWORDS_EXAMPLE = "parts of parameter names, such as {'relative_position_bias_table'}"


def _strings(module: nn.Module, path: str, method: str, expected: str) -> list[str]:
    """One of the module's own lists, checked: a bare string would otherwise be read a letter at a time."""
    answer = _asked(module, path, method)
    try:
        items = None if isinstance(answer, str) else list(answer)
    except TypeError:
        items = None
    if items is None or not all(isinstance(n, str) for n in items):
        bad = answer if items is None else next(n for n in items if not isinstance(n, str))
        raise ModelError(f"{type(module).__name__}.{method}() ({_where(path)}) gave {bad!r} ({type(bad).__name__}); "
                         f"it must return a collection of strings: {expected}.")
    return items


_TORCH_LISTING = (nn.Module.named_parameters, nn.Module._named_members, nn.Module.named_modules)
# id(twin) -> (view, the module's path, its pairs once read): what each twin answers while its lists are read.
_TWIN_ANSWERS: dict[int, tuple[ModelView, str, list[tuple[str, torch.Tensor]]]] = {}
_TWIN_UNSAFE = ("__init_subclass__", "__slots__", "__del__")


def _twin_named_parameters(self: nn.Module, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
                           ) -> Iterator[tuple[str, torch.Tensor]]:
    answer = _TWIN_ANSWERS.get(id(self))
    if answer is None or prefix or not recurse:
        return nn.Module.named_parameters(self, prefix, recurse, remove_duplicate)
    view, path, pairs = answer
    if not pairs:
        pairs.extend(view.named_parameters_of(path) or ())
    return iter(pairs)


@functools.lru_cache(maxsize=256)
def _twin_class(cls: type) -> type | None:
    """``cls`` with a ``named_parameters()`` that answers from the plan's walk, or None where a twin could do
    more than answer: the class lists its parameters its own way, reacts to being subclassed (a metaclass,
    ``__init_subclass__``), or has slots or a finalizer, which an object sharing a module's attributes must not
    have."""
    if ((cls.named_parameters, cls._named_members, cls.named_modules) != _TORCH_LISTING or type(cls) is not type
            or any(hook in vars(k) for k in cls.__mro__[:-1] for hook in _TWIN_UNSAFE)):
        return None
    namespace = {"named_parameters": _twin_named_parameters, "__module__": cls.__module__,
                 "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    return type(cls.__name__, (cls,), namespace)


def _twin(view: ModelView, path: str, module: nn.Module) -> nn.Module | None:
    """The object a module's own lists are asked of instead of the module, or None to ask the module itself.

    Many timm models (Swin, BEiT, MaxViT, MViTv2, EfficientFormer, ...) build ``no_weight_decay()`` by
    walking their own parameters: a second walk, as costly as the plan's. The twin is an instance of a
    subclass that shares the module's attribute dict (so it reads, and would write, the module's own state)
    and answers the plain ``named_parameters()`` (no prefix, recursive) with the walk's pairs: the same names,
    tensors and order as torch's. Nothing is set on the module. Where the walk's names are not the module's
    own (wrappers inside, sharing), the module itself is asked.
    """
    twin_class = _twin_class(type(module)) if view.matches_torch_listing else None
    if twin_class is None:
        return None
    try:
        twin = object.__new__(twin_class)
        object.__setattr__(twin, "__dict__", module.__dict__)
    except TypeError:  # a class whose instances object.__new__ cannot make (a C-level base)
        return None
    _TWIN_ANSWERS[id(twin)] = (view, path, [])
    return twin


class MeaningPolicy:
    """The core's default policy for one model: weight decay by meaning (see the module docstring).

    Called as ``policy(name, param, module)`` like any policy; the planner calls :meth:`decide_distinct`, which
    gives the same answers for a whole column of parameters at once. A parameter's owner type, local name and
    rank settle it, so each distinct combination is decided once; the full names are only searched, at C
    speed, for the model's own lists and relative-position markers.
    """

    __slots__ = ("_keywords", "_listed", "_view")

    def __init__(self, view: ModelView) -> None:
        self._listed, self._keywords = _model_no_weight_decay(view)
        self._view = view

    def __call__(self, name: str, param: torch.Tensor, module: nn.Module) -> Decision:
        return self.decide_all((name,), (param,), (module,))[0]

    def decide_all(self, names: Sequence[str], params: Sequence[torch.Tensor], modules: Sequence[nn.Module]
                   ) -> list[Decision]:
        """The decision for each parameter (aligned sequences of names, tensors and owning modules)."""
        decisions, codes = self.decide_distinct(names, params, modules)
        return list(map(decisions.__getitem__, codes))

    def decide_distinct(self, names: Sequence[str], params: Sequence[torch.Tensor], modules: Sequence[nn.Module]
                        ) -> tuple[list[Decision], list[int]]:
        """:meth:`decide_all` as the distinct decisions and, for each parameter, the index of its own among
        them: what the planner works with, without a lookup per parameter to find which answers are alike."""
        view = self._view
        locals_: Sequence[str]
        ranks: Iterable[int]
        if names is view.names:  # every parameter trains: the view has their local names and ranks
            locals_, ranks = view.local_names, view.ranks
        else:
            locals_ = list(map(_LAST, map(str.rpartition, names, repeat("."))))
            ranks = map(len, map(view.shape_of, params))
        # The owner's type, the local name and the rank settle a parameter unless the model's lists or a
        # relative-position marker in its full name say otherwise: decided once per distinct triple (a model
        # has a few dozen), on its first lookup, by one C-level map over the column.
        coded = _ColumnCodes()
        codes = list(map(coded.__getitem__, zip(locals_, map(type, modules), ranks, strict=True)))
        if coded.by_rank:
            for k, decision in self._by_full_name(names):
                if _settled(locals_[k], type(modules[k])) is None:
                    codes[k] = coded.code(decision)
        return coded.decisions, codes

    def _by_full_name(self, names: Sequence[str]) -> list[tuple[int, Decision]]:
        """(position, decision) of the parameters that a relative-position marker in the name or the model's own
        lists exclude, the lists last (they take precedence); found by C-level searches of the joined names.
        Only where neither the owner's type nor the local name decides do these overrule the rank."""
        text = "\n".join(names)
        found = [(k, RELATIVE_POSITION) for k in _lines_with(text, _RELATIVE_POSITION_MARKERS)]
        listed, keywords = self._listed, self._keywords
        if keywords:
            found.extend((k, MODEL_LIST) for k in _lines_with(text, keywords))
        if listed and not listed.isdisjoint(names):
            found.extend((k, MODEL_LIST) for k in compress(range(len(names)), map(listed.__contains__, names)))
        return found


class _ColumnCodes(dict[tuple[str, type, int], int]):
    """(local name, owner type, rank) -> the index of its decision in ``decisions``, decided on the first lookup
    of each key (``__missing__``): a column is coded by one C-level map, with Python work per distinct key."""

    __slots__ = ("_index", "by_rank", "decisions")

    def __init__(self) -> None:
        super().__init__()
        self.decisions: list[Decision] = []
        self._index: dict[int, int] = {}  # id(decision) -> its index in decisions
        self.by_rank = False  # whether some key is decided by its rank alone

    def code(self, decision: Decision) -> int:
        """The index of ``decision`` in ``decisions``, appended on first sight (decisions are shared objects)."""
        found = self._index.get(id(decision))
        if found is None:
            found = self._index[id(decision)] = len(self.decisions)
            self.decisions.append(decision)
        return found

    def __missing__(self, key: tuple[str, type, int]) -> int:
        local, owner_type, rank = key
        decision = _settled(local, owner_type)
        if decision is None:
            decision = WEIGHT if rank > 1 else ONE_D
            self.by_rank = True
        found = self[key] = self.code(decision)
        return found


def _settled(local: str, owner_type: type) -> Decision | None:
    """What the owner's type (a normalization layer) or else the local name settles, whatever the rank."""
    decision = _norm_decision(owner_type)
    return _decision_by_local_name(local) if decision is None else decision


@functools.lru_cache(maxsize=4096)
def _norm_decision(module_type: type) -> Decision | None:
    """The decision for every parameter of a normalization class, None for other classes.

    A pure function of the class, so it is worked out once per process: one shared Decision per class.
    """
    if not is_norm_module(module_type):
        return None
    return Decision(weight_decay=False, reason=f"{NORM_WEIGHT} ({module_type.__name__})")


def _lines_with(text: str, needles: Iterable[str]) -> set[int]:
    """The numbers of the lines of ``text`` that hold one of ``needles`` (none of which holds a newline).

    Found by C-level splits, with Python work per occurrence rather than per line.
    """
    found: set[int] = set()
    for needle in needles:
        if not needle:  # the empty string is in every line
            return set(range(text.count("\n") + 1))
        if needle not in text:  # the usual answer, without splitting (and copying) the text
            continue
        pieces = text.split(needle)
        line = 0
        for piece in pieces[:-1]:
            line += piece.count("\n")
            found.add(line)
    return found


def meaning_policy(view: ModelView) -> MeaningPolicy:
    """The core's default policy for ``view``: weight decay by meaning (see the module docstring)."""
    return MeaningPolicy(view)
