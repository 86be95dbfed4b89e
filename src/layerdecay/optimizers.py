"""Optimizer resolution and construction: every ``torch.optim`` optimizer and timm's whole registry.

Names are looked up in ``torch.optim`` first (case-insensitive: ``"adamw"`` is ``torch.optim.AdamW``),
then in timm's optimizer registry (``lamb``, ``lion``, ``adan``, ``lookahead_adamw``, ...), which is
imported only then. Prefix a name with ``timm:`` to force timm's meaning (timm's ``sgd`` is Nesterov).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from collections.abc import Callable
from typing import Any

import torch

from layerdecay.errors import ConfigError, UnknownOptimizerError

__all__ = ["create_optimizer", "torch_optimizers"]

TIMM_PREFIX = "timm:"


def torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """Lower-cased name -> class for every optimizer class exported by ``torch.optim``."""
    out = {}
    for attr in dir(torch.optim):
        obj = getattr(torch.optim, attr)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            out[attr.lower()] = obj
    return out


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

    name = optimizer.strip()
    force_timm = name.lower().startswith(TIMM_PREFIX)
    if force_timm:
        name = name[len(TIMM_PREFIX) :]
    cls = None if force_timm else torch_optimizers().get(name.lower())
    if cls is not None:
        label = f"{optimizer!r} (torch.optim.{cls.__name__})"
        _check_keywords(cls, {"lr": lr, "weight_decay": weight_decay, **kwargs}, label)
        return _construct(label, kwargs, cls, groups, lr=lr, weight_decay=weight_decay, **kwargs)

    try:
        from timm.optim import create_optimizer_v2, get_optimizer_class
    except ImportError as exc:
        raise UnknownOptimizerError(
            f"optimizer {optimizer!r} is not in torch.optim, and timm (for its registry) is not installed."
        ) from exc
    base = name.lower().split("_")[-1]
    try:
        timm_cls = get_optimizer_class(base, bind_defaults=False)
    except ValueError:
        raise _unknown(optimizer) from None
    label = f"{optimizer!r} (timm {getattr(timm_cls, '__name__', base)})"
    _check_keywords(timm_cls, kwargs, label)
    return _construct(label, kwargs, create_optimizer_v2, groups, opt=name, lr=lr, weight_decay=weight_decay, **kwargs)


def _construct(label: str, kwargs: dict[str, Any], factory: Callable[..., torch.optim.Optimizer], *args: Any,
               **all_kwargs: Any) -> torch.optim.Optimizer:
    """Call ``factory``; a value it rejects (``betas=(2, 0)``, ``momentum=-1``) becomes a ConfigError."""
    try:
        return factory(*args, **all_kwargs)
    except (ValueError, TypeError) as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no extra keywords"
        raise ConfigError(
            f"optimizer {label} rejected its arguments ({given}): {exc}. Fix the optimizer keyword named there."
        ) from exc


def check_optimizer_name(optimizer: object) -> None:
    """Fail early (before planning) on an unknown optimizer name."""
    if not isinstance(optimizer, str):
        return
    name = optimizer.strip().lower()
    if name.startswith(TIMM_PREFIX):
        name = name[len(TIMM_PREFIX) :]
    elif name in torch_optimizers():
        return
    try:
        from timm.optim import get_optimizer_info
    except ImportError:
        raise _unknown(optimizer) from None
    try:
        get_optimizer_info(name.split("_")[-1])
    except ValueError:
        raise _unknown(optimizer) from None
