"""The build API: :func:`explain`, :func:`param_groups`, :func:`build_optimizer`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from layerdecay._gc import gc_paused
from layerdecay.errors import ConfigError
from layerdecay.manager import PluginHost
from layerdecay.optimizers import check_optimizer_name, create_optimizer
from layerdecay.plan import SCALE_MODES, Plan, ScaleMode
from layerdecay.planning import check_number, make_plan

__all__ = ["build_optimizer", "explain", "param_groups"]


def explain(
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
) -> Plan:
    """Plan layer-wise lr decay and weight decay for ``model`` without building anything.

    Args:
        model: Any ``nn.Module``; wrappers (DDP, compile, FSDP, checkpointing) are seen through, and
            ``meta``-device models work. The model is never modified.
        weight_decay: Weight decay for parameters that get it.
        layer_decay: Per-layer lr factor: layer ``i`` gets ``layer_decay ** (top - i)``. 1.0 disables it.
        recipe: The owner plugin's recipe; None picks the family's published recipe, ``"timm"`` timm's.
        no_weight_decay: Extra name patterns to exclude from weight decay (globs over names and module
            prefixes, or ``re:<regex>``).
        lr_mult: Extra lr multipliers by pattern, e.g. ``{"head": 10.0}``.
        min_scale: Floor for layer scales (a warning says which layers it raised).
        plugins: Plugin objects for this call only; they take precedence over installed plugins.
        strict: Raise :class:`layerdecay.PlanError` instead of warning when the plan has warnings.
        host: A :class:`PluginHost` from :func:`create_plugin_host` instead of the default one.

    Returns:
        The :class:`Plan`: ``rows``, ``num_layers``, ``warnings``, ``table()``, ``to_json()``.
    """
    return make_plan(
        model, weight_decay=weight_decay, layer_decay=layer_decay, recipe=recipe,
        no_weight_decay=no_weight_decay, lr_mult=lr_mult, min_scale=min_scale, plugins=plugins,
        strict=strict, host=host,
    )


def _check_scale_mode(scale_mode: object) -> None:
    if scale_mode not in SCALE_MODES:
        raise ConfigError(f"scale_mode must be one of {', '.join(map(repr, SCALE_MODES))}, got {scale_mode!r}.")


@gc_paused
def param_groups(
    model: nn.Module,
    lr: float,
    *,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    recipe: str | None = None,
    no_weight_decay: Iterable[str] | str | None = None,
    lr_mult: Mapping[str, float] | None = None,
    min_scale: float = 0.0,
    plugins: Iterable[object] = (),
    strict: bool = False,
    scale_mode: ScaleMode = "lr",
    named: bool = True,
    host: PluginHost | None = None,
) -> list[dict[str, Any]]:
    """Param groups for any ``torch.optim`` optimizer (see :func:`explain` for the planning arguments).

    Each group is a plain dict: ``params``, ``lr`` (= ``lr * lr_mult``), ``weight_decay``, ``layer_id``,
    ``lr_mult`` and ``group_name``. With ``scale_mode="lr_scale"``, ``lr`` is the base value and the group
    carries ``lr_scale`` instead, for loops that multiply it in themselves. With ``named=True`` (default)
    ``params`` holds ``(name, tensor)`` pairs so the optimizer's state dict records the names.
    """
    lr = check_number("lr", lr, minimum=0.0, exclusive=True)
    _check_scale_mode(scale_mode)
    plan = make_plan(
        model, weight_decay=weight_decay, layer_decay=layer_decay, recipe=recipe,
        no_weight_decay=no_weight_decay, lr_mult=lr_mult, min_scale=min_scale, plugins=plugins,
        strict=strict, host=host,
    )
    return plan.param_groups(lr, scale_mode=scale_mode, named=named)


@gc_paused
def build_optimizer(
    model: nn.Module,
    optimizer: str | Callable[..., torch.optim.Optimizer] = "adamw",
    lr: float = 1e-3,
    *,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    recipe: str | None = None,
    no_weight_decay: Iterable[str] | str | None = None,
    lr_mult: Mapping[str, float] | None = None,
    min_scale: float = 0.0,
    plugins: Iterable[object] = (),
    strict: bool = False,
    scale_mode: ScaleMode = "lr",
    host: PluginHost | None = None,
    **optimizer_kwargs: Any,
) -> torch.optim.Optimizer:
    """Plan ``model`` and build the optimizer over its param groups.

    Args:
        model: See :func:`explain`.
        optimizer: A ``torch.optim`` name (``"adamw"``, ``"sgd"``, ...), a timm registry name
            (``"lamb"``, ``"lion"``, ``"adan"``, ``"lookahead_adamw"``; ``"timm:<name>"`` forces timm),
            or an optimizer class.
        lr: Base learning rate: the top layer's.
        scale_mode: See :func:`param_groups`.
        **optimizer_kwargs: Passed to the optimizer (``betas``, ``momentum``, ``fused``, ...).

    The other arguments are :func:`explain`'s. Parameter names reach the optimizer's state dict.
    """
    lr = check_number("lr", lr, minimum=0.0, exclusive=True)
    _check_scale_mode(scale_mode)
    check_optimizer_name(optimizer)
    plan = make_plan(
        model, weight_decay=weight_decay, layer_decay=layer_decay, recipe=recipe,
        no_weight_decay=no_weight_decay, lr_mult=lr_mult, min_scale=min_scale, plugins=plugins,
        strict=strict, host=host,
    )
    groups = plan.param_groups(lr, scale_mode=scale_mode)
    return create_optimizer(optimizer, groups, lr=lr, weight_decay=plan.weight_decay, **optimizer_kwargs)
