"""Optimizer resolution and construction: every ``torch.optim`` optimizer and timm's whole registry.

Names are looked up in ``torch.optim`` first (case-insensitive: ``"adamw"`` is ``torch.optim.AdamW``),
then in timm's optimizer registry (``lamb``, ``lion``, ``adan``, ``lookahead_adamw``, ...), which is
imported only then. Prefix a name with ``timm:`` to force timm's meaning (timm's ``sgd`` is Nesterov).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from operator import attrgetter
from types import MappingProxyType
from typing import Any

import torch
from torch.optim.optimizer import required

from layerdecay.errors import ConfigError, UnknownOptimizerError

__all__ = ["create_optimizer", "torch_optimizers"]

TIMM_PREFIX = "timm:"
_IS_LEAF = attrgetter("is_leaf")


@functools.cache
def torch_optimizers() -> Mapping[str, type[torch.optim.Optimizer]]:
    """Lower-cased name -> class for every optimizer class exported by ``torch.optim`` (read once)."""
    out = {}
    for attr in dir(torch.optim):
        obj = getattr(torch.optim, attr)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            out[attr.lower()] = obj
    return MappingProxyType(out)


def _timm_names() -> list[str]:
    from timm.optim import list_optimizers

    return list(list_optimizers())


def _unknown(name: str) -> UnknownOptimizerError:
    known = sorted(torch_optimizers())
    with contextlib.suppress(ImportError):
        known += [n for n in _timm_names() if n not in known]
    close = difflib.get_close_matches(name.lower(), known, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownOptimizerError(
        f"optimizer {name!r} is neither in torch.optim nor in timm's optimizer registry.{hint} "
        "Pass a name from either, or an optimizer class."
    )


def _accepted_keywords(cls: Callable[..., Any]) -> set[str] | None:
    """Keyword names ``cls`` accepts, or None when it takes ``**kwargs``."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return set(signature.parameters)


def _check_keywords(cls: Callable[..., Any], kwargs: dict[str, Any], label: str) -> None:
    accepted = _accepted_keywords(cls)
    if accepted is None:
        return
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        takes = ", ".join(sorted(accepted - {"params"}))
        raise ConfigError(f"optimizer {label} does not take {', '.join(repr(k) for k in unknown)}; it takes: {takes}.")


def create_optimizer(
    optimizer: str | Callable[..., torch.optim.Optimizer],
    groups: list[dict[str, Any]],
    *,
    lr: float,
    weight_decay: float,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Instantiate ``optimizer`` (a name or a class) over ``groups``; ``lr``/``weight_decay`` are defaults."""
    if not isinstance(optimizer, str):
        if not callable(optimizer):
            raise ConfigError(f"optimizer must be a name or an optimizer class, got {optimizer!r}.")
        label = getattr(optimizer, "__name__", repr(optimizer))
        _check_keywords(optimizer, {"lr": lr, "weight_decay": weight_decay, **kwargs}, label)
        return _construct(label, kwargs, optimizer, groups, lr=lr, weight_decay=weight_decay, **kwargs)

    name = _timm_name(optimizer)
    if name is None:
        cls = torch_optimizers()[optimizer.strip().lower()]
        label = f"{optimizer!r} (torch.optim.{cls.__name__})"
        _check_keywords(cls, {"lr": lr, "weight_decay": weight_decay, **kwargs}, label)
        return _construct(label, kwargs, cls, groups, lr=lr, weight_decay=weight_decay, **kwargs)

    base = _timm_base(optimizer, name)
    from timm.optim import create_optimizer_v2, get_optimizer_class

    timm_cls = get_optimizer_class(base, bind_defaults=False)
    label = f"{optimizer!r} (timm {getattr(timm_cls, '__name__', base)})"
    _check_keywords(timm_cls, kwargs, label)
    return _construct(label, kwargs, create_optimizer_v2, groups, opt=name, lr=lr, weight_decay=weight_decay, **kwargs)


def _append_planned_group(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> None:
    """Append one plan group as ``Optimizer.add_param_group`` would, minus its disjointness proof.

    ``add_param_group`` compares each new group with every earlier one, so building G groups costs
    O(G x N): 45 s for 8,004 groups, and even a 28-group plan pays more for it (hashing every tensor
    through Python) than for planning. A plan puts every parameter in exactly one group (tested), so that
    proof is redundant here; everything else (names, leaf check, defaults, required options) is kept.
    """
    params = list(group["params"])
    names: list[str] | None = None
    if params and isinstance(params[0], tuple):
        names, params = map(list, zip(*params, strict=True))
        group["param_names"] = names
    group["params"] = params
    if not optimizer.defaults.get("differentiable", None) and not all(map(_IS_LEAF, params)):
        for i, p in enumerate(params):
            if not (p.is_leaf or p.retains_grad):
                which = repr(names[i]) if names else f"#{i} of param group {group.get('group_name', '')!r}"
                raise ConfigError(f"parameter {which} is a non-leaf tensor, which no optimizer can update; "
                                  "plan the model's own parameters.")
    for key, default in optimizer.defaults.items():
        if default is required and key not in group:
            raise ConfigError(f"param group {group.get('group_name')!r} has no value for the required option "
                              f"{key!r} of {type(optimizer).__name__}; pass it as a keyword.")
        group.setdefault(key, default)
    optimizer.param_groups.append(group)


def _construct(label: str, kwargs: dict[str, Any], factory: Callable[..., torch.optim.Optimizer], *args: Any,
               **all_kwargs: Any) -> torch.optim.Optimizer:
    """Call ``factory(groups, ...)``; a value it rejects (``betas=(2, 0)``) becomes a ConfigError.

    With more than one group, the optimizer is built over the first group and the others are appended
    without torch's disjointness check (see :func:`_append_planned_group`), as long as the optimizer keeps
    ``Optimizer.add_param_group`` and its constructor did nothing per parameter (Adagrad fills its state
    there): any other optimizer is built the ordinary way.
    """
    groups, *rest = args
    fast = len(groups) > 1
    try:
        # The probe gets a copy of the first group: torch rewrites the dict it is given, and a class that
        # overrides add_param_group is then rebuilt from the untouched groups.
        optimizer = factory([dict(groups[0])] if fast else groups, *rest, **all_kwargs)
    except (ValueError, TypeError) as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no extra keywords"
        raise ConfigError(
            f"optimizer {label} rejected its arguments ({given}): {exc}. Fix the optimizer keyword named there."
        ) from exc
    if not fast:
        return optimizer
    if type(optimizer).add_param_group is not torch.optim.Optimizer.add_param_group or optimizer.state:
        return factory(groups, *rest, **all_kwargs)
    for group in groups[1:]:
        _append_planned_group(optimizer, group)
    return optimizer


def _timm_name(optimizer: str) -> str | None:
    """The timm registry name ``optimizer`` stands for, or None when it names a ``torch.optim`` class."""
    name = optimizer.strip()
    if name.lower().startswith(TIMM_PREFIX):
        return name[len(TIMM_PREFIX) :]
    return None if name.lower() in torch_optimizers() else name


def _timm_base(optimizer: str, name: str) -> str:
    """The registry entry behind timm name ``name`` (``lookahead_adamw`` -> ``adamw``), or UnknownOptimizerError."""
    try:
        from timm.optim import get_optimizer_info
    except ImportError as exc:
        raise UnknownOptimizerError(
            f"optimizer {optimizer!r} is not in torch.optim, and timm (for its registry) is not installed."
        ) from exc
    base = name.lower().split("_")[-1]
    try:
        get_optimizer_info(base)
    except ValueError:
        raise _unknown(optimizer) from None
    return base


def check_optimizer_name(optimizer: object) -> None:
    """Fail early (before planning) on an unknown optimizer name."""
    if isinstance(optimizer, str) and (name := _timm_name(optimizer)) is not None:
        _timm_base(optimizer, name)
