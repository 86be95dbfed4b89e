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
from collections.abc import Callable, Iterable, Sequence
from itertools import compress, repeat
from operator import attrgetter, itemgetter
from typing import NamedTuple

import torch
from torch import nn

from layerdecay.model_view import ModelView

__all__ = ["Decision", "MeaningPolicy", "Policy", "meaning_policy", "is_norm_module"]

_LAST = itemgetter(2)
_NDIM = attrgetter("ndim")
_UNDECIDED = -1


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
# Substrings of the full name that mark relative-position parameters (tables, Swin-v2's cpb MLP).
_RELATIVE_POSITION_MARKERS = (
    "relative_position_bias_table",
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
    # Which classes define the lists is asked once per class (a deep model has many modules, few classes);
    # their modules are asked in tree order.
    for path, module in view.modules_of_type(_defines_lists):
        prefix = path + "." if path else ""
        has_names, has_keywords = _lists_of(type(module))
        if has_names:
            names.update(prefix + n for n in module.no_weight_decay())
        if has_keywords:
            keywords.extend(module.no_weight_decay_keywords())
    return frozenset(names), tuple(keywords)


class MeaningPolicy:
    """The core's default policy for one model: weight decay by meaning (see the module docstring).

    Called as ``policy(name, param, module)`` like any policy; the planner calls :meth:`decide_distinct`, which
    gives the same answers for a whole column of parameters at once. Most parameters are decided by their
    owner's type or their own local name, so those are looked up once per distinct type and name; only the
    rest (the weights of plain layers, mostly) are read by full name and rank.
    """

    __slots__ = ("_keywords", "_listed", "_true_shapes", "_view_locals", "_view_names")

    def __init__(self, view: ModelView) -> None:
        self._listed, self._keywords = _model_no_weight_decay(view)
        self._true_shapes = view.true_shapes
        self._view_names, self._view_locals = view.names, view.local_names

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
        decisions: list[Decision] = []
        code_of: dict[int, int] = {}  # id(decision) -> its index in decisions

        def code(decision: Decision) -> int:
            found = code_of.get(id(decision))
            if found is None:
                found = code_of[id(decision)] = len(decisions)
                decisions.append(decision)
            return found

        # The planner asks about the view's own names when every parameter trains: their local names are known.
        locals_: Sequence[str]
        if names is self._view_names:
            locals_ = self._view_locals
        else:
            locals_ = list(map(_LAST, map(str.rpartition, names, repeat("."))))
        # Each distinct local name's decision, or _UNDECIDED where the name settles nothing.
        by_local = {local: _UNDECIDED if (d := _decision_by_local_name(local)) is None else code(d)
                    for local in set(locals_)}
        codes = list(map(by_local.__getitem__, locals_))
        # A normalization module's parameters are decided by its type, whatever their names: each position
        # takes its type's code where the type is a norm, its own (``dict.get``'s default) elsewhere.
        types = list(map(type, modules))
        norm_codes = {t: code(norm) for t in set(types) if (norm := _norm_decision(t)) is not None}
        if norm_codes:
            codes = list(map(norm_codes.get, types, codes))
        if _UNDECIDED in by_local.values():
            pending = [i for i, c in enumerate(codes) if c == _UNDECIDED]
            decided = self._by_name_and_rank([names[i] for i in pending], [params[i] for i in pending])
            ids = list(map(id, decided))  # a few shared decisions: coded once each
            code_by_id = {key: code(decision) for key, decision in dict(zip(ids, decided, strict=True)).items()}
            for i, decision_code in zip(pending, map(code_by_id.__getitem__, ids), strict=True):
                codes[i] = decision_code
        return decisions, codes

    def _by_name_and_rank(self, names: list[str], params: list[torch.Tensor]) -> list[Decision]:
        """Decisions for parameters that neither their module type nor their local name settles.

        In order of precedence: the model's own lists, relative-position markers in the name, rank <= 1.
        """
        true_shapes = self._true_shapes
        if true_shapes:
            ranks: Iterable[int] = [len(true_shapes[id(p)]) if id(p) in true_shapes else p.ndim for p in params]
        else:
            ranks = map(_NDIM, params)
        out = [WEIGHT if rank > 1 else ONE_D for rank in ranks]
        text = "\n".join(names)
        for k in _lines_with(text, _RELATIVE_POSITION_MARKERS):
            out[k] = RELATIVE_POSITION
        listed, keywords = self._listed, self._keywords
        for k in _lines_with(text, keywords) if keywords else ():
            out[k] = MODEL_LIST
        if listed:
            for k in compress(range(len(names)), map(listed.__contains__, names)):
                out[k] = MODEL_LIST
        return out


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
