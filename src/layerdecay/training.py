"""Training with layerdecay's param groups: schedulers, weight-decay schedules, resume, unfreezing, checks.

Layer decay lives in each group's ``lr``: a group built by layerdecay has ``lr = base * lr_mult`` (the
default ``scale_mode="lr"``), or ``lr = base`` plus an ``lr_scale`` key that the training loop multiplies in
(``scale_mode="lr_scale"``). Every way of losing it is silent: a torch scheduler ignores ``lr_scale``, a timm
scheduler multiplies ``lr_scale`` into an ``lr`` that already holds it, an absolute floor (``eta_min``,
``lr_min``) is the same for every group, an optimizer state loaded by position lands on other parameters, and
param groups built before FSDP2 sharding hold tensors that no longer train. The helpers here do the right
thing, and :func:`check_scheduler` and :func:`verify` say so, by name, when something else did not.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from layerdecay._text import listed
from layerdecay.errors import ConfigError, LayerDecayWarning, PlanMismatchError
from layerdecay.model_view import ModelView, strip_wrapper_prefixes
from layerdecay.plan import Plan
from layerdecay.planning import make_plan

__all__ = [
    "add_unfrozen_params",
    "check_scheduler",
    "cosine_schedule",
    "group_multipliers",
    "load_optimizer_state",
    "scaled",
    "set_lr",
    "verify",
]

_MAX_LISTED = 8
# Keys that describe what a group is (not where a schedule has taken it): they must match on resume.
_IDENTITY_KEYS = ("group_name", "layer_id", "lr_mult", "wd_mult", "lr_scale")


# --------------------------------------------------------------------------- multipliers and lr / wd setting


def _groups_of(obj: Any) -> list[dict[str, Any]]:
    """The param groups of an optimizer (torch, timm, DeepSpeed, Accelerate wrappers) or a list of groups."""
    groups = getattr(obj, "param_groups", None)
    if groups is None and isinstance(obj, Sequence) and all(isinstance(g, Mapping) for g in obj):
        groups = obj
    if groups is None:
        raise ConfigError(f"expected an optimizer or a list of param groups, got {type(obj).__name__}.")
    return list(groups)


def _mult(group: Mapping[str, Any]) -> float | None:
    """The layer-decay multiplier of a group, or None for a group layerdecay did not build."""
    if "lr_scale" in group:
        return float(group["lr_scale"])
    if "lr_mult" in group:
        return float(group["lr_mult"])
    return None


def group_multipliers(optimizer: Any) -> list[float]:
    """Each group's lr multiplier (``lr_scale``, else ``lr_mult``, else 1.0 for foreign groups)."""
    return [m if (m := _mult(g)) is not None else 1.0 for g in _groups_of(optimizer)]


def scaled(optimizer: Any, value: float) -> list[float]:
    """``value`` times each group's lr multiplier: per-group values for schedulers that take absolute lrs.

    Torch's ``OneCycleLR(max_lr=)``, ``CyclicLR(base_lr=, max_lr=)`` and ``ReduceLROnPlateau(min_lr=)``
    accept one value per group; a single number would give every layer the same lr and erase the decay::

        OneCycleLR(optimizer, max_lr=scaled(optimizer, 1e-3), total_steps=1000)

    Args:
        optimizer: The optimizer (or its list of param groups).
        value: The value meant for the top layer (multiplier 1.0).
    """
    value = float(value)
    return [value * m for m in group_multipliers(optimizer)]


def _wd_mult(group: dict[str, Any]) -> float:
    """A group's weight-decay multiplier; recorded on first use for groups that do not carry one."""
    if "wd_mult" not in group:
        group["initial_weight_decay"] = group.get("initial_weight_decay", group.get("weight_decay", 0.0))
        group["wd_mult"] = 1.0 if group["initial_weight_decay"] else 0.0
    return float(group["wd_mult"])


def set_lr(optimizer: Any, lr: float, weight_decay: float | None = None) -> None:
    """Set every group's lr to ``lr * multiplier`` and, optionally, its weight decay to ``wd * wd_mult``.

    The per-iteration update of ConvNeXt/BEiT/MAE-style loops, done once and right: it works for groups built
    with either ``scale_mode`` (``lr_scale`` if present, else ``lr_mult``), and the weight-decay schedule
    skips no-decay groups (``wd_mult == 0``) and keeps per-group weight-decay multipliers. Groups that
    carry no ``wd_mult`` get one recorded on first use (1.0 if their weight decay was non-zero, else 0.0).

    Args:
        optimizer: The optimizer (torch, timm, or a wrapper exposing ``param_groups``).
        lr: The schedule's value for this iteration (the top layer's lr).
        weight_decay: The weight-decay schedule's value, or None to leave weight decay alone.
    """
    for group in _groups_of(optimizer):
        mult = _mult(group)
        group["lr"] = lr * (mult if mult is not None else 1.0)
        if weight_decay is not None:
            group["weight_decay"] = weight_decay * _wd_mult(group)


def cosine_schedule(
    total_steps: int, *, warmup_steps: int = 0, warmup_start: float = 0.0, floor: float = 0.0
) -> Callable[[int], float]:
    """A warmup + cosine factor for ``LambdaLR`` whose start and floor are fractions of each group's lr.

    ``CosineAnnealingLR(eta_min=)`` and timm's ``lr_min``/``warmup_lr_init`` are absolute and the same for
    every group, so the lowest layers end at the same floor as the head. A factor keeps the ratios::

        LambdaLR(optimizer, cosine_schedule(1000, warmup_steps=50, floor=0.01))

    Args:
        total_steps: Steps until the floor is reached.
        warmup_steps: Linear warmup length.
        warmup_start: Factor at step 0 of the warmup.
        floor: Factor at the end of the cosine (``eta_min / lr``).
    """
    if total_steps <= 0 or warmup_steps < 0 or warmup_steps > total_steps:
        raise ConfigError(f"cosine_schedule needs 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps})"
                          " and total_steps > 0.")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_start + (1.0 - warmup_start) * step / warmup_steps
        span = total_steps - warmup_steps
        t = min(step - warmup_steps, span) / span if span else 1.0
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


# --------------------------------------------------------------------------- scheduler checks


def _is_torch_scheduler(obj: Any) -> bool:
    return isinstance(obj, torch.optim.lr_scheduler.LRScheduler)


def _is_timm_scheduler(obj: Any) -> bool:
    return any(c.__module__.startswith("timm.scheduler") for c in type(obj).__mro__)


def _children(scheduler: Any) -> list[Any]:
    return list(getattr(scheduler, "_schedulers", None) or [])


def _proportional(values: Sequence[float], mults: Sequence[float], rtol: float) -> bool:
    pairs = [(v, m) for v, m in zip(values, mults, strict=False) if m > 0]
    if not pairs:
        return True
    ref = [v / m for v, m in pairs]
    top = max(abs(r) for r in ref)
    return top == 0 or all(math.isclose(r, ref[0], rel_tol=rtol, abs_tol=rtol * top) for r in ref)


def _uniform(values: Sequence[float], rtol: float) -> bool:
    return all(math.isclose(v, values[0], rel_tol=rtol) for v in values)


def _static_problems(scheduler: Any, groups: list[dict[str, Any]], rtol: float) -> tuple[list[str], list[str]]:
    """(errors, warnings) visible from the scheduler's configuration alone."""
    errors: list[str] = []
    notes: list[str] = []
    name = type(scheduler).__name__
    known = [(i, m) for i, g in enumerate(groups) if (m := _mult(g)) is not None]
    mults = [m for _, m in known]
    decayed = len({round(m, 12) for m in mults}) > 1
    has_lr_scale = any("lr_scale" in g and g["lr_scale"] != 1.0 for g in groups)

    for child in _children(scheduler):
        e, n = _static_problems(child, groups, rtol)
        errors += e
        notes += n

    if _is_torch_scheduler(scheduler) and has_lr_scale:
        errors.append(
            f"{name} is a torch scheduler and the param groups carry 'lr_scale' (scale_mode='lr_scale'): torch "
            "schedulers ignore 'lr_scale', so layer decay is silently lost. Build the groups with the default "
            "scale_mode='lr', or drive the lr with layerdecay.training.set_lr() or a timm scheduler."
        )
    if _is_timm_scheduler(scheduler):
        base = list(getattr(scheduler, "base_values", []) or [])
        scaled_groups = [i for i, g in enumerate(groups) if "lr_scale" in g]
        if scaled_groups and len(base) == len(groups):
            values = [base[i] for i in scaled_groups]
            if not _uniform(values, rtol):
                scales = [float(groups[i]["lr_scale"]) for i in scaled_groups]
                how = ("decay applied twice (lr_mult ** 2)" if _proportional(values, scales, rtol)
                       else "lrs that differ per group while 'lr_scale' is set")
                errors.append(
                    f"{name} multiplies 'lr_scale' into each group's lr, and the groups' lrs already differ: "
                    f"{how}. Build the groups with scale_mode='lr_scale' (lr stays the base value) for timm "
                    "schedulers, or drop the 'lr_scale' keys."
                )
        if not scaled_groups and decayed:
            floors = {k: getattr(scheduler, k, 0.0) for k in ("lr_min", "warmup_lr_init")}
            if not getattr(scheduler, "warmup_t", 0):
                floors.pop("warmup_lr_init")
            absolute = {k: v for k, v in floors.items() if v}
            if absolute:
                notes.append(
                    f"{name} has absolute {', '.join(f'{k}={v:g}' for k, v in absolute.items())}: the same value "
                    "for every group, so the lower layers' lrs are pulled to it and the decay ratios flatten. "
                    "Use scale_mode='lr_scale' with timm schedulers (they multiply it in after the schedule), "
                    "or set these to 0."
                )
    inner = getattr(scheduler, "lr_scheduler", None)  # timm's PlateauLRScheduler wraps torch's plateau
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) or isinstance(
        inner, torch.optim.lr_scheduler.ReduceLROnPlateau
    ):
        plateau = scheduler if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) else inner
        floors = [plateau.min_lrs[i] for i, _ in known]
        if decayed and any(floors) and not _proportional(floors, mults, rtol):
            notes.append(
                f"{name} has min_lr values that are not proportional to the groups' multipliers: groups that "
                "reach the floor lose their decay ratio. Pass min_lr=layerdecay.training.scaled(optimizer, value) "
                "to torch's ReduceLROnPlateau (timm's PlateauLRScheduler takes one lr_min: use 0)."
            )
    cosine = (torch.optim.lr_scheduler.CosineAnnealingLR, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts)
    if isinstance(scheduler, cosine) and scheduler.eta_min and decayed:
        notes.append(
            f"{name} has eta_min={scheduler.eta_min:g}, one absolute floor for every group: the lower layers "
            "are pulled to it and the decay ratios flatten. Use eta_min=0, or "
            "LambdaLR(optimizer, layerdecay.training.cosine_schedule(T, floor=eta_min / lr))."
        )
    if isinstance(scheduler, torch.optim.lr_scheduler.CyclicLR) and decayed:
        for label, values in (("base_lr", scheduler.base_lrs), ("max_lr", scheduler.max_lrs)):
            picked = [values[i] for i, _ in known]
            if not _proportional(picked, mults, rtol):
                errors.append(
                    f"CyclicLR {label} is not proportional to the groups' multipliers (a single number gives every "
                    f"layer the same lr): layer decay is lost. Pass {label}=layerdecay.training.scaled(optimizer, x)."
                )
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and decayed:
        picked = [groups[i].get("max_lr", 0.0) for i, _ in known]
        if not _proportional(picked, mults, rtol):
            errors.append(
                "OneCycleLR max_lr is not proportional to the groups' multipliers (a single number gives every "
                "layer the same lr): layer decay is lost. Pass max_lr=layerdecay.training.scaled(optimizer, x)."
            )
    return errors, notes


def _runtime_problem(groups: list[dict[str, Any]], rtol: float) -> tuple[str, bool] | None:
    """(message, is_error) when the groups' current lrs are not ``value * multiplier``."""
    known = [(float(g["lr"]), m) for g in groups if (m := _mult(g)) is not None and "lr" in g]
    if len(known) < 2:
        return None
    lrs = [lr for lr, _ in known]
    mults = [m for _, m in known]
    if len({round(m, 12) for m in mults}) < 2 or _proportional(lrs, mults, rtol):
        return None
    if max(abs(v) for v in lrs) == 0:
        return None
    detail = ", ".join(f"{lr:.3g} (x{m:.3g})" for lr, m in known[:_MAX_LISTED])
    if _uniform(lrs, rtol):
        return (f"every group has the same lr though their multipliers differ: layer decay is lost. lrs: {detail}. "
                "Something set the lr without the multiplier (a torch scheduler on 'lr_scale' groups, a loop "
                "writing group['lr'] = lr, a scalar max_lr): use layerdecay.training.set_lr() or scaled().", True)
    if _proportional(lrs, [m * m for m in mults], rtol):
        return (f"each group's lr is the schedule value times its multiplier SQUARED: decay applied twice. "
                f"lrs: {detail}. A timm scheduler multiplied 'lr_scale' into lrs that already held it: build the "
                "groups with scale_mode='lr_scale' for timm schedulers, or drop 'lr_scale'.", True)
    return (f"the groups' lrs are no longer proportional to their multipliers: lrs: {detail}. An absolute floor "
            "(eta_min, lr_min, min_lr, warmup_lr_init) or a manual edit changed the ratios.", False)


def check_scheduler(obj: Any, *, rtol: float = 1e-6) -> None:
    """Check that layer decay survives a scheduler (or a training loop) exactly once.

    Pass the scheduler right after creating it, or the optimizer (after the first ``set_lr`` in an
    ``lr_scale`` loop) at any point of training. It checks the configuration (a torch scheduler on
    ``lr_scale`` groups, a timm scheduler on groups whose lr already holds the multiplier, scalar
    ``max_lr``/``base_lr``, absolute floors) and the current lrs: every group's lr must be one schedule value
    times its multiplier.

    Raises:
        PlanMismatchError: Decay is lost or squared; the message says which and what to change.

    Warns:
        LayerDecayWarning: An absolute floor (``eta_min``, ``lr_min``, ``min_lr``, ``warmup_lr_init``) flattens
        the ratios where it applies.
    """
    scheduler = None if hasattr(obj, "param_groups") else obj
    optimizer = obj if scheduler is None else getattr(obj, "optimizer", None)
    if optimizer is None:
        raise ConfigError(f"check_scheduler expects a scheduler or an optimizer, got {type(obj).__name__}.")
    groups = _groups_of(optimizer)
    errors: list[str] = []
    notes: list[str] = []
    if scheduler is not None:
        errors, notes = _static_problems(scheduler, groups, rtol)
    if not errors:
        found = _runtime_problem(groups, rtol)
        if found is not None:
            # An absolute floor already found explains uneven lrs (e.g. timm's warmup starts every group at
            # warmup_lr_init): report it as that warning, not as lost decay.
            (errors if found[1] and not notes else notes).append(found[0])
    if errors:
        raise PlanMismatchError("\n".join(dict.fromkeys(errors)))
    for note in dict.fromkeys(notes):
        warnings.warn(note, LayerDecayWarning, stacklevel=2)


# --------------------------------------------------------------------------- names, verify


def _param_names(model: nn.Module) -> dict[int, str]:
    view = ModelView(model)
    return {id(p): n for n, p in zip(view.names, view.params, strict=True)}



def verify(optimizer: Any, model: nn.Module, *, plan: Plan | None = None) -> None:
    """Check that ``optimizer`` trains ``model``'s current parameters, under the names and (optionally) plan.

    Call it after wrapping or sharding (FSDP2 ``fully_shard`` replaces every parameter with a DTensor: groups
    built before hold stale tensors and ``step()`` updates nothing), after loading a state, and after
    unfreezing.

    Args:
        optimizer: The optimizer (anything with ``param_groups``).
        model: The model, wrapped or not.
        plan: Optionally the model's plan (``layerdecay.explain``): each parameter's group must then carry the
            plan's ``lr_mult`` and weight decay, and every planned parameter must be in the optimizer.

    Raises:
        PlanMismatchError: Naming the stale, misnamed, missing or misplaced parameters.
    """
    _verify(optimizer, model, plan, warn_untrained=True)


def _verify(optimizer: Any, model: nn.Module, plan: Plan | None, *, warn_untrained: bool) -> None:
    """:func:`verify`; ``warn_untrained=False`` leaves out the warning about trainable parameters in no group
    (for :func:`add_unfrozen_params`, which is about to add them)."""
    names = _param_names(model)
    problems: list[str] = []
    stale: list[str] = []
    misnamed: list[str] = []
    seen: set[int] = set()
    placed: dict[str, dict[str, Any]] = {}
    for gi, group in enumerate(_groups_of(optimizer)):
        given = group.get("param_names")
        for pi, p in enumerate(group["params"]):
            label = given[pi] if given and pi < len(given) else f"param_groups[{gi}]['params'][{pi}]"
            current = names.get(id(p))
            if current is None:
                stale.append(f"{label} {tuple(p.shape)}")
                continue
            seen.add(id(p))
            placed[current] = group
            if given and strip_wrapper_prefixes(given[pi]) != current:
                misnamed.append(f"{given[pi]!r} holds {current!r}")
    if stale:
        problems.append(
            f"{len(stale)} optimizer parameter(s) are not parameters of the model (stale tensors: they never "
            f"train): {listed(stale)}. Build the param groups after wrapping/sharding the model "
            "(FSDP2 fully_shard replaces parameters with DTensors)."
        )
    if misnamed:
        problems.append(f"{len(misnamed)} parameter name(s) in the optimizer do not match the tensors they hold: "
                        f"{listed(misnamed)}. A state was loaded by position; use load_optimizer_state().")
    if plan is not None:
        missing = [r.name for r in plan.rows if not r.excluded and r.name not in placed]
        if missing:
            problems.append(f"{len(missing)} planned parameter(s) are in no param group: {listed(missing)}.")
        wrong = []
        for r in plan.rows:
            group = placed.get(r.name)
            if group is None or r.excluded:
                continue
            mult = _mult(group)
            wd_mult = group.get("wd_mult")
            planned_wd_mult = r.weight_decay / plan.weight_decay if plan.weight_decay else 0.0
            if mult is not None and not math.isclose(mult, r.lr_mult, rel_tol=1e-9):
                wrong.append(f"{r.name}: lr_mult {mult:g}, plan {r.lr_mult:g}")
            elif wd_mult is not None and not math.isclose(wd_mult, planned_wd_mult, rel_tol=1e-9, abs_tol=1e-12):
                wrong.append(f"{r.name}: wd_mult {wd_mult:g}, plan {planned_wd_mult:g}")
        if wrong:
            problems.append(f"{len(wrong)} parameter(s) sit in a group with other hyperparameters than the plan's: "
                            f"{listed(wrong)}.")
    elif warn_untrained:
        view = ModelView(model)
        missing = [n for n, p in zip(view.names, view.params, strict=True) if p.requires_grad and id(p) not in seen]
        if missing and not stale:
            warnings.warn(f"{len(missing)} trainable parameter(s) are in no param group and will not train: "
                          f"{listed(missing)}.", LayerDecayWarning, stacklevel=3)
    if problems:
        raise PlanMismatchError(f"the optimizer does not match {type(ModelView(model).model).__name__}:\n"
                                + "\n".join(f"  - {p}" for p in problems))


# --------------------------------------------------------------------------- resume


def _names_of_groups(groups: Sequence[Mapping[str, Any]], where: str) -> list[list[str]]:
    out = []
    for i, g in enumerate(groups):
        names = g.get("param_names")
        if names is None:
            raise PlanMismatchError(
                f"param group {i} of the {where} has no 'param_names', so its parameters cannot be matched by name. "
                "Build groups with named=True (the default of layerdecay.param_groups/build_optimizer) and save "
                "the state with torch >= 2.6."
            )
        out.append([strip_wrapper_prefixes(n) for n in names])
    return out


def _diff_states(current: list[dict[str, Any]], saved: list[dict[str, Any]]) -> list[str]:
    cur_names = _names_of_groups(current, "optimizer")
    old_names = _names_of_groups(saved, "saved state")
    where_now = {n: (gi, g) for gi, (g, ns) in enumerate(zip(current, cur_names, strict=True)) for n in ns}
    where_then = {n: (gi, g) for gi, (g, ns) in enumerate(zip(saved, old_names, strict=True)) for n in ns}
    diffs = []
    added = [n for n in where_now if n not in where_then]
    dropped = [n for n in where_then if n not in where_now]
    if added:
        diffs.append(f"parameters not in the saved state (added or newly unfrozen): {listed(added)}")
    if dropped:
        diffs.append(f"saved parameters the optimizer no longer has (removed or newly frozen): {listed(dropped)}")
    moved = []
    for n, (gi, g) in where_now.items():
        if n not in where_then:
            continue
        gj, h = where_then[n]
        for key in _IDENTITY_KEYS:
            if key in g and key in h and g[key] != h[key]:
                moved.append(f"{n}: {key} saved {h[key]!r}, now {g[key]!r}")
                break
        else:
            if gi != gj:
                moved.append(f"{n}: saved in group {gj}, now in group {gi}")
    if moved:
        diffs.append(f"parameters whose group changed (another recipe or options): {listed(moved)}")
    if not diffs:
        if len(current) != len(saved):
            diffs.append(f"{len(saved)} saved groups, {len(current)} now")
        else:
            for gi, (a, b) in enumerate(zip(cur_names, old_names, strict=True)):
                if a != b:
                    diffs.append(f"group {gi} holds the same parameters in another order")
    return diffs


def load_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any], *,
                         remap: bool = False) -> None:
    """Load an optimizer state, matching parameters by name; never by position alone.

    ``Optimizer.load_state_dict`` assigns saved state by position: under another plan (another recipe, a
    parameter added or newly frozen) it silently puts one parameter's moments on another. This compares the
    saved groups' ``param_names`` and identity keys (``group_name``, ``layer_id``, ``lr_mult``, ``wd_mult``,
    ``lr_scale``) with the optimizer's first.

    Args:
        optimizer: The freshly built optimizer (named groups: layerdecay's default).
        state_dict: What ``optimizer.state_dict()`` returned before.
        remap: When the plans differ, move each parameter's state (moments, step) to the parameter of the same
            name instead of raising. Parameters new to the optimizer start with empty state; saved ones it no
            longer has are dropped. Group hyperparameters follow the new plan, at the saved point of the schedule:
            each group's ``lr`` (and ``initial_lr``) is the saved schedule value times its new multiplier. Build the
            scheduler afterwards with ``last_epoch=<steps done>`` (torch) or load its state when the number of
            groups did not change.

    Raises:
        PlanMismatchError: The states differ and ``remap`` is False; the message lists what differs.
    """
    saved_groups = [dict(g) for g in state_dict["param_groups"]]
    current = optimizer.param_groups
    diffs = _diff_states(current, saved_groups)
    if not diffs:
        optimizer.load_state_dict(state_dict)
        return
    if not remap:
        raise PlanMismatchError(
            "the saved optimizer state was made under another plan:\n" + "\n".join(f"  - {d}" for d in diffs)
            + "\nRebuild with the same options, or pass remap=True to move per-parameter state by name."
        )
    _remap(optimizer, state_dict, saved_groups)


def _schedule_value(groups: Sequence[Mapping[str, Any]], key: str) -> float | None:
    for g in groups:
        m = _mult(g)
        if m and key in g and "lr_scale" not in g:
            return float(g[key]) / m
        if "lr_scale" in g and key in g:
            return float(g[key]) if key != "lr" else float(g[key]) / float(g["lr_scale"])
    return None


def _remap(optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any], saved_groups: list[dict[str, Any]]) -> None:
    by_name: dict[str, tuple[dict[str, Any], Any]] = {}
    saved_state = state_dict["state"]
    for group, names in zip(saved_groups, _names_of_groups(saved_groups, "saved state"), strict=True):
        for index, name in zip(group["params"], names, strict=True):
            if index in saved_state:
                by_name[name] = (saved_state[index], group)
    fresh = optimizer.state_dict()
    new_groups = copy.deepcopy(fresh["param_groups"])
    new_state: dict[int, Any] = {}
    lr_value = _schedule_value(saved_groups, "lr")
    initial_value = _schedule_value(saved_groups, "initial_lr")
    cur_names = _names_of_groups(optimizer.param_groups, "optimizer")
    for group, live, names in zip(new_groups, optimizer.param_groups, cur_names, strict=True):
        mult = _mult(group) or 1.0
        if lr_value is not None:
            group["lr"] = lr_value * mult
        if initial_value is not None:
            group["initial_lr"] = initial_value * (1.0 if "lr_scale" in group else mult)
        for index, name, param in zip(group["params"], names, live["params"], strict=True):
            if name not in by_name:
                continue
            state = by_name[name][0]
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim() > 0 and tuple(value.shape) != tuple(param.shape):
                    raise PlanMismatchError(f"saved state {key!r} of {name!r} has shape {tuple(value.shape)}, the "
                                            f"parameter now {tuple(param.shape)}: it cannot be remapped.")
            new_state[index] = state
    optimizer.load_state_dict({"state": new_state, "param_groups": new_groups})


# --------------------------------------------------------------------------- progressive unfreezing


def _extend_scheduler(scheduler: Any, group: Mapping[str, Any]) -> None:
    """Teach a scheduler built for the old groups about one appended group."""
    for child in _children(scheduler):
        _extend_scheduler(child, group)
    if isinstance(scheduler, (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)):
        raise ConfigError(f"{type(scheduler).__name__} keeps per-group cycle bounds; it cannot take a new group. "
                          "Build it after unfreezing, or unfreeze into existing groups.")
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.min_lrs.append(0.0)
        scheduler.default_min_lr = None
        return
    if _is_timm_scheduler(scheduler):
        scheduler.base_values.append(group["initial_lr"])
        if getattr(scheduler, "warmup_steps", None) and len(scheduler.warmup_steps) == len(scheduler.base_values) - 1:
            init = getattr(scheduler, "warmup_lr_init", 0.0)
            steps = scheduler.warmup_t if getattr(scheduler, "warmup_t", 0) else 1
            scheduler.warmup_steps.append((group["initial_lr"] - init) / steps)
        inner = getattr(scheduler, "lr_scheduler", None)
        if isinstance(inner, torch.optim.lr_scheduler.ReduceLROnPlateau):
            inner.min_lrs.append(inner.min_lrs[-1])
        return
    if _is_torch_scheduler(scheduler):
        if hasattr(scheduler, "base_lrs") and not _children(scheduler):
            scheduler.base_lrs.append(group["initial_lr"])
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if lambdas is not None:
            if len({id(f) for f in lambdas}) > 1:
                raise ConfigError(f"{type(scheduler).__name__} has one lambda per group; which one applies to a new "
                                  "group is unknown. Use a single lambda, or unfreeze into existing groups.")
            lambdas.append(lambdas[0])
        last = getattr(scheduler, "_last_lr", None)
        if isinstance(last, list):
            last.append(group["lr"])
        return
    raise ConfigError(f"add_unfrozen_params does not know how to extend {type(scheduler).__name__} with a new group.")


def add_unfrozen_params(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    *,
    scheduler: Any = None,
    plan: Plan | None = None,
    **plan_options: Any,
) -> list[str]:
    """Add newly unfrozen parameters to an existing optimizer with their plan's lr multiplier and weight decay.

    The model is re-planned (pass the options the optimizer was built with: ``layer_decay``, ``weight_decay``,
    ``recipe``, ...; or a ready ``plan``) and diffed against the parameters already in the optimizer. Each new
    parameter joins the existing group with its multiplier and weight decay; parameters whose group does not
    exist yet get a new group at the current point of the schedule (``lr`` = current schedule value times its
    multiplier, ``initial_lr`` likewise), and ``scheduler`` (torch or timm) is extended to drive it.

    Args:
        optimizer: The optimizer built by layerdecay (its groups carry ``lr_mult``).
        model: The model after setting ``requires_grad=True`` on the parameters to unfreeze.
        scheduler: The scheduler driving ``optimizer``; needed when a new group is created and groups carry
            ``initial_lr`` (a scheduler is attached).
        plan: A plan of ``model`` made after unfreezing, instead of ``plan_options``.
        **plan_options: Options for :func:`layerdecay.explain`.

    Returns:
        The names of the parameters added.

    Raises:
        PlanMismatchError: The optimizer holds tensors that are no longer the model's (see :func:`verify`).
    """
    if plan is None:
        plan = make_plan(model, stacklevel=3, **plan_options)
    elif plan_options:
        raise ConfigError("pass either plan= or planning options to add_unfrozen_params, not both.")
    # Stale or misnamed tensors first: adding beside them would train the wrong thing.
    _verify(optimizer, model, None, warn_untrained=False)
    groups = optimizer.param_groups
    present = {id(p) for g in groups for p in g["params"]}
    new_rows = [i for i, r in enumerate(plan.rows) if not r.excluded and id(plan.parameters[i]) not in present]
    if not new_rows:
        return []
    known = [g for g in groups if _mult(g) is not None]
    if not known:
        raise ConfigError("the optimizer's groups carry no 'lr_mult': build it with layerdecay to unfreeze into it.")
    named = all("param_names" in g for g in groups)
    lr_scale_mode = any("lr_scale" in g for g in known)
    lr_now = _schedule_value(known, "lr")
    initial = _schedule_value(known, "initial_lr")
    if initial is None and scheduler is not None:
        initial = lr_now
    base_wd = None
    for g in known:
        if g.get("wd_mult"):
            base_wd = float(g["weight_decay"]) / float(g["wd_mult"])
            break

    def wd_mult_of(row_index: int) -> float:
        wd = plan.rows[row_index].weight_decay
        return wd / plan.weight_decay if plan.weight_decay else 0.0

    def home(row_index: int) -> dict[str, Any] | None:
        row = plan.rows[row_index]
        for g in known:
            if not math.isclose(_mult(g) or 0.0, row.lr_mult, rel_tol=1e-9):
                continue
            if "wd_mult" in g:
                if math.isclose(float(g["wd_mult"]), wd_mult_of(row_index), rel_tol=1e-9, abs_tol=1e-12):
                    return g
            elif math.isclose(float(g.get("initial_weight_decay", g["weight_decay"])), row.weight_decay,
                              rel_tol=1e-9, abs_tol=1e-12):
                return g
        return None

    added: list[str] = []
    pending: dict[tuple[float, float], list[int]] = {}
    for i in new_rows:
        group = home(i)
        if group is None:
            row = plan.rows[i]
            pending.setdefault((row.lr_mult, row.weight_decay), []).append(i)
            continue
        group["params"].append(plan.parameters[i])
        if "param_names" in group:
            group["param_names"].append(plan.rows[i].name)
        added.append(plan.rows[i].name)

    if pending and any("initial_lr" in g for g in groups) and scheduler is None:
        raise ConfigError(
            "new param groups are needed for "
            f"{listed([plan.rows[i].name for rows in pending.values() for i in rows])}, and a scheduler drives "
            "this optimizer (its groups carry 'initial_lr'): pass scheduler= so the new groups are scheduled too."
        )
    for (mult, wd), rows in pending.items():
        spec = next(s for s in plan.groups if rows[0] in s.rows)
        params: list[Any] = [(plan.rows[i].name, plan.parameters[i]) if named else plan.parameters[i] for i in rows]
        wd_mult = wd / plan.weight_decay if plan.weight_decay else 0.0
        group: dict[str, Any] = {
            "params": params,
            "lr": (lr_now if lr_now is not None else 0.0) * mult,
            "weight_decay": base_wd * wd_mult if base_wd is not None else wd,
            "layer_id": plan.rows[rows[0]].layer_id,
            "lr_mult": mult,
            "wd_mult": wd_mult,
            "group_name": spec.name,
        }
        if lr_scale_mode:
            group["lr_scale"] = mult
        if initial is not None:
            group["initial_lr"] = initial * (1.0 if lr_scale_mode else mult)
        optimizer.add_param_group(group)
        if scheduler is not None:
            _extend_scheduler(scheduler, optimizer.param_groups[-1])
        added += [plan.rows[i].name for i in rows]
    return added

