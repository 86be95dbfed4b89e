"""Planning: model -> :class:`~layerdecay.plan.Plan`. The one code path every API call goes through."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from itertools import compress
from numbers import Real
from operator import add, attrgetter
from typing import Any, NamedTuple

from torch import nn

from layerdecay import generic
from layerdecay._gc import gc_paused
from layerdecay.errors import ConfigError, LayerDecayError, LayerDecayWarning, ModelError, PlanError, PluginError
from layerdecay.manager import PluginHost, default_host, disable_hint
from layerdecay.model_view import ModelView
from layerdecay.patterns import PatternSet
from layerdecay.plan import Bucket, Plan, Resolved
from layerdecay.policy import Decision, MeaningPolicy, Policy
from layerdecay.recipes import select_recipe
from layerdecay.validation import ParamFact, PlanFacts, check_plan

__all__ = ["make_plan", "check_number"]

_REQUIRES_GRAD = attrgetter("requires_grad")
_MEMBERS = attrgetter("members")
_PLAIN_NUMBERS = (float, int)  # bool is a subclass of int, not int itself: it still fails below


def check_number(name: str, value: Any, *, minimum: float | None = None, exclusive: bool = False,
                 maximum: float | None = None) -> float:
    """``value`` as a finite float within bounds, or :class:`ConfigError` naming ``name``."""
    hint = _NUMBER_HINTS.get(name, "")
    # Plain floats and ints first: the abstract Real check is slow, and every plan checks four numbers.
    if type(value) not in _PLAIN_NUMBERS and (isinstance(value, bool) or not isinstance(value, Real)):
        raise ConfigError(f"{name} must be a number, got {value!r} ({type(value).__name__}).{hint}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be finite, got {value!r}.{hint}")
    if minimum is not None and (number <= minimum if exclusive else number < minimum):
        bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}.{hint}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name} must be <= {maximum:g}, got {value!r}.{hint}")
    return number


# What a valid value looks like, appended to the messages of check_number.
_NUMBER_HINTS = {
    "layer_decay": " Pass a factor > 0: 1.0 turns layer decay off; fine-tuning recipes use 0.65-0.9.",
    "weight_decay": " Pass a value >= 0: 0.0 turns weight decay off; fine-tuning recipes use 0.05.",
    "lr": " Pass the top layer's learning rate, a number > 0 such as 1e-3.",
    "min_scale": " Pass a floor in 0..1 for the layer scales; 0.0 means no floor.",
}


def _user_policy(no_weight_decay: PatternSet[bool], lr_mult: PatternSet[float]) -> Policy | None:
    if not no_weight_decay and not lr_mult:
        return None
    cache: dict[str, Decision | None] = {}

    def policy(name: str, param: Any, module: Any) -> Decision | None:
        # Memoized per name: a pattern's hit count then counts each parameter once.
        if name in cache:
            return cache[name]
        nwd = no_weight_decay.match(name)
        mult = lr_mult.match(name)
        decision = None
        if nwd is not None or mult is not None:
            decision = Decision(
                weight_decay=False if nwd is not None else None,
                reason=f"no_weight_decay pattern {nwd[0]!r}" if nwd is not None else None,
                lr_mult=mult[1] if mult is not None else None,
            )
        cache[name] = decision
        return decision

    return policy


def _lr_mult_patterns(lr_mult: Mapping[str, float] | None) -> PatternSet[float]:
    if lr_mult is None:
        return PatternSet({}, "lr_mult")
    if not isinstance(lr_mult, Mapping):
        raise ConfigError(f"lr_mult must be a mapping of name pattern -> multiplier, got {lr_mult!r}.")
    values = {p: check_number(f"lr_mult[{p!r}]", v, minimum=0.0, exclusive=True) for p, v in lr_mult.items()}
    return PatternSet(values, "lr_mult")


def _check_scales(scales: list[float], num_layers: int, plugin: str) -> None:
    if len(scales) != num_layers:
        raise PluginError(
            f"plugin {plugin!r} answered layerdecay_lr_scale with {len(scales)} scales for {num_layers} "
            "layer ids; the contract is one finite positive float per layer id.",
            plugin=plugin,
        )
    for i, s in enumerate(scales):
        if type(s) is float and 0.0 < s < math.inf:
            continue  # the common case, without the (slow) abstract-class check below
        if isinstance(s, bool) or not isinstance(s, Real) or not math.isfinite(s) or s <= 0:
            raise PluginError(
                f"plugin {plugin!r} answered layerdecay_lr_scale with scale {s!r} for layer id {i}; "
                "the contract is a finite positive float.",
                plugin=plugin,
            )


@gc_paused
def make_plan(
    model: nn.Module,
    *,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    recipe: str | None = None,
    no_weight_decay: Iterable[str] | str | None = None,
    lr_mult: Mapping[str, float] | None = None,
    min_scale: float = 0.0,
    plugins: Iterable[object] = (),
    strict: bool = False,
    host: PluginHost | None = None,
    stacklevel: int = 2,
) -> Plan:
    """Plan ``model``; see :func:`layerdecay.explain` for the arguments."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    layer_decay = check_number("layer_decay", layer_decay, minimum=0.0, exclusive=True)
    weight_decay = check_number("weight_decay", weight_decay, minimum=0.0)
    min_scale = check_number("min_scale", min_scale, minimum=0.0, maximum=1.0)
    if recipe is not None and not isinstance(recipe, str):
        raise ConfigError(f"recipe must be a string or None, got {recipe!r}.")
    nwd_patterns = PatternSet.of_names(no_weight_decay, "no_weight_decay")
    mult_patterns = _lr_mult_patterns(lr_mult)

    host = host or default_host()
    host.raise_for_failures()
    plugins = list(plugins or ())
    if plugins:
        host = host.extended(plugins)

    view = ModelView(model)
    if not any(p.requires_grad for p in view.params):
        raise ModelError(
            f"{type(view.model).__name__} has no trainable parameters "
            f"({len(view)} parameters, all with requires_grad=False): there is nothing to optimize."
        )

    claimed = host.claim(view, recipe)
    rivals: tuple[str, ...] = ()
    if claimed is None:
        if recipe is not None:
            select_recipe(recipe, generic.RECIPES, owner="the generic fallback (no plugin claims this model)")
        num_layers, owner = 1, None
        layer_fn, layer_by = (lambda _name: 0), "nobody"
    else:
        num_layers, owner, rivals = claimed
        found = host.layer_id(view, recipe, num_layers)
        if found is None:
            raise PluginError(
                f"plugin {owner!r} claimed the model (layerdecay_num_layers) but no plugin answers "
                "layerdecay_layer_id for it.",
                plugin=owner,
            )
        layer_fn, layer_by = found
    fallback = None
    if owner == generic.PLUGIN_NAME:
        layer_map = generic.fallback_layer_map(view)
        fallback = layer_map.strategy if layer_map is not None else None

    scales, scale_by = host.lr_scales(view, recipe, num_layers, layer_decay)
    _check_scales(scales, num_layers, scale_by)
    clamped = [i for i, s in enumerate(scales) if s < min_scale]
    if clamped:
        scales = [max(s, min_scale) for s in scales]

    policies = host.policies(view, recipe)
    user = _user_policy(nwd_patterns, mult_patterns)
    if user is not None:
        policies.insert(0, ("options", user))

    buckets, outcomes, outcome_at = _plan_buckets(view, layer_fn, layer_by, num_layers, scales, weight_decay, policies)

    top = num_layers - 1
    names, tensors = view.names, view.params
    notes = check_plan(PlanFacts(
        model_name=type(view.model).__name__, num_layers=num_layers, layer_decay=layer_decay, owner=owner,
        rivals=rivals, fallback=fallback, trainable=sum(map(len, map(_MEMBERS, buckets))),
        used_layer_ids={b.layer_id for b in buckets},
        top_params=[ParamFact(names[i], tuple(view.shape_of(tensors[i])), top)
                    for b in buckets if b.layer_id == top for i in b.members],
        all_layer_ids=lambda: _all_layer_ids(view, layer_fn, num_layers),
        unused_patterns={p.option: p.unused() for p in (nwd_patterns, mult_patterns)},
        clamped=clamped, min_scale=min_scale, scales=scales,
    ))

    plan = Plan(
        num_layers=num_layers,
        scales=tuple(scales),
        layer_decay=layer_decay,
        weight_decay=weight_decay,
        recipe=recipe,
        owner=owner,
        fallback=fallback,
        warnings=tuple(notes),
        layer_by=layer_by,
        buckets=tuple(buckets),
        outcomes=tuple(outcomes),
        outcome_at=outcome_at,
        view_names=names,
        view_params=tensors,
        true_shapes=view.true_shapes,
    )
    if notes:
        if strict:
            raise PlanError("strict=True and the plan has warnings:\n" + "\n".join(f"  - {n}" for n in notes))
        for note in notes:
            warnings.warn(note, LayerDecayWarning, stacklevel=stacklevel + 1)
    return plan


def _all_layer_ids(view: ModelView, layer_fn: Any, num_layers: int) -> set[int]:
    ids = layer_fn if isinstance(layer_fn, (list, tuple)) else map(layer_fn, view.names)
    return {lid for lid in ids if isinstance(lid, int) and 0 <= lid < num_layers}


def _bad_layer_id(layer_by: str, name: str, lid: object, num_layers: int) -> PluginError:
    return PluginError(
        f"plugin {layer_by!r} gave parameter {name!r} the layer id {lid!r} ({type(lid).__name__}) "
        f"in layerdecay_layer_id; the contract is an int in 0..{num_layers - 1} "
        f"(num_layers={num_layers}). The plugin is at fault; {disable_hint(layer_by)}.",
        plugin=layer_by,
    )


def _bad_decision(plugin_name: str, name: str, d: object) -> PluginError:
    return PluginError(
        f"plugin {plugin_name!r} answered {d!r} ({type(d).__name__}) for parameter {name!r} from "
        "the function it returned from layerdecay_param_policy; the contract is a "
        "layerdecay.Decision or None.",
        plugin=plugin_name,
    )


class _Planned(NamedTuple):
    buckets: list[Bucket]
    outcomes: list[Resolved]
    outcome_at: Sequence[int]  # view position -> index into outcomes (-1 for frozen parameters)


def _plan_buckets(
    view: ModelView, layer_fn: Any, layer_by: str, num_layers: int, scales: list[float],
    weight_decay: float, policies: list[tuple[str, Policy]],
) -> _Planned:
    """The planning pass: each trainable parameter's position goes into the bucket of its layer id and
    hyperparameters, and its policy outcome (with the reason) is recorded for the rows.

    This is the hot path of every plan, so it works a column at a time rather than a parameter at a time:
    the layer ids come as the plugin's list (or its function mapped over the names), each policy answers
    for all trainable parameters at once (``decide_all``, as the core's does, or mapped at C speed), the
    answers are checked and combined once per distinct value, and a parameter then costs one append.
    """
    names, params, owners = view.names, view.params, view.owners
    positions: Sequence[int]
    if all(map(_REQUIRES_GRAD, params)):
        positions, t_names, t_params, t_owners = range(len(names)), names, params, owners
    else:
        positions = list(compress(range(len(names)), map(_REQUIRES_GRAD, params)))
        t_names, t_params, t_owners = ([column[i] for i in positions] for column in (names, params, owners))
    lids = _layer_ids(layer_fn, layer_by, t_names, positions, num_layers)
    outcomes, codes = _outcomes(view, policies, t_names, t_params, t_owners)

    # Outcomes that differ only in their reason share a bucket: (decay, lr_mult factor, wd_mult, exclude).
    kinds: dict[tuple[Any, ...], int] = {}
    kind_of = [kinds.setdefault((r.decay, r.lr_mult, r.wd_mult, r.exclude), len(kinds)) for r in outcomes]
    kind_keys = list(kinds)
    # A bucket's key is kind * num_layers + layer id: one int, sorted as (kind, layer id).
    key_base = [kind * num_layers for kind in kind_of]
    members_of: dict[int, list[int]] = {}
    keys = map(add, map(key_base.__getitem__, codes), lids)
    for key, position in zip(keys, positions, strict=True):
        members = members_of.get(key)
        if members is None:
            members_of[key] = [position]
        else:
            members.append(position)
    buckets = []
    for key in sorted(members_of):  # kinds in order of first appearance, then layer ids
        kind, lid = divmod(key, num_layers)
        decay, extra, wd_mult, exclude = kind_keys[kind]
        mult = scales[lid] if extra is None else scales[lid] * extra
        wd = (weight_decay if wd_mult is None else weight_decay * wd_mult) if decay else 0.0
        buckets.append(Bucket(lid, mult, wd, extra, exclude, members_of[key]))
    if isinstance(positions, range):
        outcome_at: Sequence[int] = codes
    else:
        outcome_at = [-1] * len(names)
        for position, code in zip(positions, codes, strict=True):
            outcome_at[position] = code
    return _Planned(buckets, outcomes, outcome_at)


def _plugin_raised(plugin: str, hook: str, exc: Exception) -> PluginError:
    return PluginError(
        f"plugin {plugin!r} raised {type(exc).__name__} in the function it returned from {hook}: {exc}",
        plugin=plugin,
    )


def _layer_ids(layer_fn: Any, layer_by: str, names: Sequence[str], positions: Sequence[int], num_layers: int
               ) -> Sequence[int]:
    """The layer id of each trainable parameter, checked against the contract (an int in ``0 .. num_layers-1``).

    ``layer_fn`` is the plugin's function of the name, or its ids aligned with the view's names.
    """
    if isinstance(layer_fn, (list, tuple)):
        lids: Sequence[int] = layer_fn if isinstance(positions, range) else [layer_fn[i] for i in positions]
    else:
        try:
            lids = list(map(layer_fn, names))
        except LayerDecayError:
            raise
        except Exception as exc:
            raise _plugin_raised(layer_by, "layerdecay_layer_id", exc) from exc
    # By type first: True and 1.0 are equal to 1, so a set of the ids alone would hide them.
    if not lids or set(map(type, lids)) != {int} or min(lids) < 0 or max(lids) >= num_layers:
        for name, lid in zip(names, lids, strict=True):
            if type(lid) is not int or not 0 <= lid < num_layers:
                raise _bad_layer_id(layer_by, name, lid, num_layers)
    return lids


def _answers(plugin: str, policy: Policy, names: Sequence[str], params: Sequence[Any], owners: Sequence[Any]
             ) -> tuple[list[Any], list[int]]:
    """One policy's distinct answers (their types are checked by :func:`_outcomes`) and, for each parameter,
    the index of its answer among them."""
    try:
        if isinstance(policy, MeaningPolicy):
            return policy.decide_distinct(names, params, owners)
        decide_all = getattr(policy, "decide_all", None)
        if decide_all is not None:
            answers = list(decide_all(names, params, owners))
        else:
            answers = list(map(policy, names, params, owners))
    except LayerDecayError:
        raise
    except Exception as exc:
        raise _plugin_raised(plugin, "layerdecay_param_policy", exc) from exc
    if len(answers) != len(names):
        raise PluginError(
            f"plugin {plugin!r} answered {len(answers)} decisions for {len(names)} parameters from the decide_all "
            "of the policy it returned from layerdecay_param_policy; the contract is one per parameter.",
            plugin=plugin,
        )
    # Policies answer with shared Decision objects: alike answers are told by identity, at C speed.
    ids = list(map(id, answers))
    distinct = dict(zip(ids, answers, strict=True))
    index = dict(zip(distinct, range(len(distinct)), strict=True))
    return list(distinct.values()), list(map(index.__getitem__, ids))


def _outcomes(view: ModelView, policies: list[tuple[str, Policy]], names: Sequence[str], params: Sequence[Any],
              owners: Sequence[Any]) -> tuple[list[Resolved], list[int]]:
    """The distinct policy outcomes, and for each parameter the index of its outcome among them.

    The answers of all policies are combined once per distinct tuple of answers, not once per parameter.
    Only where no policy decided weight decay does the parameter's own rank decide, one parameter at a time.
    """
    plugins = [plugin for plugin, _ in policies]
    columns = [_answers(plugin, policy, names, params, owners) for plugin, policy in policies]
    for plugin, (distinct, codes) in zip(plugins, columns, strict=True):
        for k, answer in enumerate(distinct):
            if answer is not None and not isinstance(answer, Decision):
                raise _bad_decision(plugin, names[codes.index(k)], answer)
    # Each distinct combination of answers (a tuple of answer indices, one per policy), in order of first
    # appearance, and the combination of each parameter.
    if len(columns) == 1:
        only, keys = columns[0]
        combinations: dict[Any, tuple[Any, ...]] = {k: (a,) for k, a in enumerate(only)}
    else:
        keys = list(zip(*(codes for _, codes in columns), strict=True))
        combinations = {key: tuple(d[k] for (d, _), k in zip(columns, key, strict=True)) for key in dict.fromkeys(keys)}
    outcomes: list[Resolved] = []
    interned: dict[Resolved, int] = {}

    def code(resolved: Resolved) -> int:
        found = interned.get(resolved)
        if found is None:
            found = interned[resolved] = len(outcomes)
            outcomes.append(resolved)
        return found

    code_of: dict[Any, int] = {}
    for key, answers in combinations.items():
        resolved = _combine(answers, plugins)
        code_of[key] = -1 if resolved is None else code(resolved)
    if len(columns) == 1 and list(code_of.values()) == list(code_of):
        codes = keys  # one policy whose distinct answers are the distinct outcomes, in order: nothing to remap
    else:
        codes = list(map(code_of.__getitem__, keys))
    if -1 in code_of.values():
        true_shapes = view.true_shapes
        for i in [i for i, c in enumerate(codes) if c == -1]:
            param = params[i]
            by_ndim = (len(true_shapes[id(param)]) if id(param) in true_shapes else param.ndim) > 1
            answers = [distinct[column_codes[i]] for distinct, column_codes in columns]
            codes[i] = code(_combine(answers, plugins, by_ndim))  # type: ignore[arg-type]
    return outcomes, codes


def _combine(answers: Sequence[Decision | None], plugins: Sequence[str], by_ndim: bool | None = None
             ) -> Resolved | None:
    """Answers (highest precedence first) combined field by field; None when none decided weight decay
    and ``by_ndim`` (the parameter's own rank says decay) is not given."""
    decay = reason = extra = wd_mult = exclude = None
    decay_by = "nobody"
    for plugin, d in zip(plugins, answers, strict=True):
        if d is None:
            continue
        if decay is None and d.weight_decay is not None:
            decay, reason, decay_by = d.weight_decay, d.reason, plugin
        if extra is None and d.lr_mult is not None:
            extra = d.lr_mult
        if wd_mult is None and d.wd_mult is not None:
            wd_mult = d.wd_mult
        if exclude is None and d.exclude is not None:
            exclude = d.exclude
    if decay is None:
        if by_ndim is None:
            return None
        decay, reason = by_ndim, "no policy answered; by ndim"
    return Resolved(bool(decay), reason or ("weight" if decay else "no decay"), extra, wd_mult, bool(exclude), decay_by)
