"""Plan validation: every check that turns a plan into warnings lives here.

The planner collects the facts it already knows (who claimed the model, which layer ids were used, which
patterns matched, which scales were clamped) into :class:`PlanFacts`; :func:`check_plan` turns them into
readable notes. The planner puts them in ``Plan.warnings`` (shown in the table and the JSON) and issues them
as :class:`~layerdecay.errors.LayerDecayWarning`, or raises one :class:`~layerdecay.errors.PlanError` with
``strict=True``, so a doubtful plan is visible however it is looked at.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

from layerdecay._text import listed
from layerdecay.manager import disable_hint

__all__ = ["GENERIC_OWNER", "ParamFact", "PlanFacts", "check_plan", "looks_like_embedding"]

GENERIC_OWNER = "generic"


class ParamFact(NamedTuple):
    """What validation reads of one trainable parameter."""

    name: str
    shape: tuple[int, ...]
    layer_id: int


class PlanFacts(NamedTuple):
    """Everything the checks look at, gathered by the planner without a second pass over the model.

    Attributes:
        model_name: The model's class name, for messages.
        num_layers: Number of layer ids.
        layer_decay: The decay factor asked for.
        owner: The plugin that claimed the model, or None when none did.
        rivals: Other plugins of the owner's kind that claim the model too (the owner decides).
        fallback: How the generic fallback found the layers, when it was used.
        trainable: Number of trainable parameters.
        used_layer_ids: Layer ids that hold a trainable parameter.
        top_params: The trainable parameters in the top layer, with their shapes.
        all_layer_ids: Layer ids of every parameter, frozen ones included (a layer that holds only frozen
            parameters is not a gap); a collection, or a function computing it, called only when a layer
            id is unused. None means: the trainable ones only.
        unused_patterns: Option name (``no_weight_decay``, ``lr_mult``) -> its patterns that matched nothing.
        clamped: Layer ids whose scale ``min_scale`` raised.
        min_scale: The floor that was applied.
        scales: The final lr multiplier of each layer id.
    """

    model_name: str
    num_layers: int
    layer_decay: float
    owner: str | None
    rivals: Sequence[str] = ()
    fallback: str | None = None
    trainable: int = 0
    used_layer_ids: Collection[int] = ()
    top_params: Sequence[ParamFact] = ()
    all_layer_ids: Collection[int] | Callable[[], Collection[int]] | None = None
    unused_patterns: Mapping[str, Sequence[str]] = MappingProxyType({})
    clamped: Sequence[int] = ()
    min_scale: float = 0.0
    scales: Sequence[float] = ()


# Name pieces (split at '.' and '_') that mean "embedding, token or position": pos_embed, cls_token,
# word_embeddings, position_embeddings, absolute_pos_embed, mask_token, ... but not post_layernorm.
# As one search of the whole name: a piece is a run of word characters between '.'/'_' (or the ends).
_EMBED_PIECE = re.compile(r"(?:^|[._])(?:[^\W_]*embed[^\W_]*|[^\W_]*tokens?|pos|posit[^\W_]*)(?=[._]|$)")


_RELATIVE_POSITION = ("rel_pos", "relative_position", "position_bias")


def looks_like_embedding(name: str, shape: Sequence[int]) -> bool:
    """Whether a parameter looks like an input embedding, a token or an absolute position table.

    By name pieces, or by a ``[1, N, C]`` shape for a parameter the model holds directly (a nested one of
    that shape, such as an attention-pool query, belongs to its module). Relative-position biases are
    attention state, not embeddings.
    """
    lowered = name.lower()
    if any(map(lowered.__contains__, _RELATIVE_POSITION)):
        return False
    if _EMBED_PIECE.search(lowered):
        return True
    return "." not in name and len(shape) == 3 and shape[0] == 1


def _id_ranges(ids: Sequence[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    parts: list[str] = []
    start = prev = ids[0]
    for i in [*ids[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


def _no_plugin(facts: PlanFacts) -> list[str]:
    if facts.owner is not None or facts.layer_decay == 1.0:
        return []
    return [
        f"no plugin understood {facts.model_name} and the generic fallback found no repeated blocks: every "
        "parameter is in layer 0, so layer_decay has no effect. Install the family's plugin or register a "
        "layerdecay_layer_id rule."
    ]


def _rivals(facts: PlanFacts) -> list[str]:
    if not facts.rivals:
        return []
    owner, others = facts.owner, ", ".join(repr(r) for r in facts.rivals)
    return [f"{len(facts.rivals) + 1} plugins claim {facts.model_name}: {owner!r} and {others}; {owner!r} was "
            f"registered later, so it decides. If that is not what you want, {disable_hint(owner)}; "
            f"if it is, disable {others}."]


def _fallback(facts: PlanFacts) -> list[str]:
    if facts.owner != GENERIC_OWNER:
        return []
    how = f" ({facts.fallback})" if facts.fallback else ""
    return [f"no plugin claimed {facts.model_name}; the generic fallback assigned the layer ids{how}. "
            "Check the plan, or install the family's plugin."]


def _clamped(facts: PlanFacts) -> list[str]:
    ids = sorted(facts.clamped)
    if not ids:
        return []
    return [f"min_scale={facts.min_scale:g} raised the scale of {len(ids)} layer id(s) ({_id_ranges(ids)}); "
            "their ratios to the layers above are no longer layer_decay."]


# Below this, an lr multiplier leaves a layer effectively untrained (a 1e-3 lr becomes 1e-11).
NEGLIGIBLE_SCALE = 1e-8


def _negligible(facts: PlanFacts) -> list[str]:
    ids = [i for i, s in enumerate(facts.scales) if s < NEGLIGIBLE_SCALE]
    if not ids:
        return []
    return [f"{len(ids)} layer id(s) ({_id_ranges(ids)}) get an lr multiplier below {NEGLIGIBLE_SCALE:g} "
            f"(layer_decay={facts.layer_decay:g} over {facts.num_layers} layers): they effectively do not train. "
            "Raise layer_decay, or set min_scale."]


def _unused_patterns(facts: PlanFacts) -> list[str]:
    return [
        f"{option} pattern {pattern!r} matched no trainable parameter; check the spelling against plan.rows names."
        for option, patterns in facts.unused_patterns.items()
        for pattern in patterns
    ]


def _collapsed(facts: PlanFacts) -> list[str]:
    """A claimed model whose trainable parameters all share one layer id: decay does nothing."""
    if facts.owner is None or facts.layer_decay == 1.0 or not facts.trainable:
        return []
    if len(facts.used_layer_ids) != 1:
        return []
    (lid,) = facts.used_layer_ids
    return [f"all {facts.trainable} trainable parameters of {facts.model_name} are in layer id {lid} "
            f"(of {facts.num_layers}), so layer_decay has no effect; plugin {facts.owner!r} did not tell the "
            "layers apart."]


def _gaps(facts: PlanFacts) -> list[str]:
    """Layer ids that no parameter uses: the scale jumps by more than one factor across them."""
    if facts.owner is None or not facts.trainable:
        return []
    used = set(facts.used_layer_ids)
    if len(used) <= 1 or len(used) == facts.num_layers:
        return []  # collapsed (reported as such), or no gap
    holders = facts.all_layer_ids() if callable(facts.all_layer_ids) else facts.all_layer_ids
    holders = set(holders) if holders is not None else used
    empty = [i for i in range(facts.num_layers) if i not in used and i not in holders]
    if not empty:
        return []
    return [f"layer ids {_id_ranges(empty)} hold no parameter: the scale jumps by more than layer_decay across "
            f"the gap ({len(empty)} empty of {facts.num_layers}). The recipe does not fit this model's depth."]


def _embeddings_on_top(facts: PlanFacts) -> list[str]:
    """Embedding-like parameters in the top layer usually fell through the layer map unrecognized."""
    top = facts.num_layers - 1
    if top == 0:
        return []
    names = [p.name for p in facts.top_params if p.layer_id == top and looks_like_embedding(p.name, p.shape)]
    if not names:
        return []
    return [f"{len(names)} parameter(s) in the top layer {top} look like embeddings or tokens ({listed(names)}); "
            "unknown parameters fall to the top, where they get the full lr. Check the layer map, or give them "
            "a layer with a layerdecay_layer_id rule."]


_CHECKS = (
    _rivals, _no_plugin, _fallback, _clamped, _negligible, _unused_patterns, _collapsed, _gaps, _embeddings_on_top,
)


def check_plan(facts: PlanFacts) -> list[str]:
    """All the warnings a plan with these facts deserves, in a stable order."""
    notes: list[str] = []
    for check in _CHECKS:
        notes.extend(check(facts))
    return notes

