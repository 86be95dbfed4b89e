"""The core's own defaults, registered like any plugin (``trylast``): weight decay by meaning and the
exponential scale. Plugins and user rules registered later take precedence over both."""

from __future__ import annotations

import sys

from layerdecay._markers import hookimpl
from layerdecay.model_view import ModelView
from layerdecay.policy import Policy, meaning_policy

PLUGIN_NAME = "core"


def exponential_scales(num_layers: int, layer_decay: float) -> list[float]:
    """``layer_decay ** (top - layer_id)`` for every layer id; the top layer gets 1.0.

    Thousands of layers underflow to 0.0 (0.75 ** 4000); those stay at the smallest positive float, so
    the scale keeps its contract (positive) and the plan warns that such layers effectively do not train.
    """
    top = num_layers - 1
    return [max(layer_decay ** (top - i), sys.float_info.min) for i in range(num_layers)]


@hookimpl(trylast=True)
def layerdecay_param_policy(model: ModelView) -> Policy:
    return meaning_policy(model)


@hookimpl(trylast=True)
def layerdecay_lr_scale(num_layers: int, layer_decay: float) -> list[float]:
    return exponential_scales(num_layers, layer_decay)
