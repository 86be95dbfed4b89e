"""layerdecay: layer-wise learning-rate decay and weight-decay grouping for fine-tuning any model.

>>> import layerdecay
>>> optimizer = layerdecay.build_optimizer(model, "adamw", lr=1e-3, layer_decay=0.75)  # doctest: +SKIP
>>> print(layerdecay.explain(model).table())  # doctest: +SKIP
"""

from __future__ import annotations

from layerdecay._markers import hookimpl
from layerdecay.api import build_optimizer, explain, param_groups
from layerdecay.errors import (
    ConfigError,
    LayerDecayError,
    LayerDecayWarning,
    ModelError,
    PlanError,
    PlanMismatchError,
    PluginError,
    UnknownOptimizerError,
    UnknownRecipeError,
)
from layerdecay.manager import PluginHost, PluginInfo, create_plugin_host, register, unregister
from layerdecay.model_view import ModelView, strip_wrapper_prefixes, unwrap
from layerdecay.plan import GroupSpec, LayerSummary, Plan, PlanRow
from layerdecay.policy import Decision, Policy, is_norm_module
from layerdecay.recipes import select_recipe

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Decision",
    "GroupSpec",
    "LayerDecayError",
    "LayerDecayWarning",
    "LayerSummary",
    "ModelError",
    "ModelView",
    "Plan",
    "PlanError",
    "PlanMismatchError",
    "PlanRow",
    "PluginError",
    "PluginHost",
    "PluginInfo",
    "Policy",
    "UnknownOptimizerError",
    "UnknownRecipeError",
    "__version__",
    "build_optimizer",
    "create_plugin_host",
    "explain",
    "hookimpl",
    "is_norm_module",
    "param_groups",
    "register",
    "select_recipe",
    "strip_wrapper_prefixes",
    "unregister",
    "unwrap",
]
