"""The core's own defaults, registered like any plugin (``trylast``): weight decay by meaning and the
exponential scale. Plugins and user rules registered later take precedence over both."""

from __future__ import annotations

from layerdecay._markers import hookimpl
from layerdecay.model_view import ModelView
from layerdecay.policy import Policy, meaning_policy

PLUGIN_NAME = "core"


def exponential_scales(num_layers: int, layer_decay: float) -> list[float]:
    """``layer_decay ** (top - layer_id)`` for every layer id; the top layer gets 1.0."""
    top = num_layers - 1
    return [layer_decay ** (top - i) for i in range(num_layers)]


@hookimpl(trylast=True)
def layerdecay_param_policy(model: ModelView) -> Policy:
    return meaning_policy(model)


@hookimpl(trylast=True)
def layerdecay_lr_scale(num_layers: int, layer_decay: float) -> list[float]:
    return exponential_scales(num_layers, layer_decay)
