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
from layerdecay.plot import MissingExtraError, plot_plan
from layerdecay.policy import Decision, Policy, is_norm_module
from layerdecay.recipes import select_recipe
from layerdecay.render import PlanComparison, compare_plans
from layerdecay.rules import load_rules, parse_rules
from layerdecay.training import (
    add_unfrozen_params,
    check_scheduler,
    cosine_schedule,
    group_multipliers,
    load_optimizer_state,
    scaled,
    set_lr,
    verify,
)

__version__ = "0.1.0"

__all__ = [
    "add_unfrozen_params",
    "build_optimizer",
    "check_scheduler",
    "compare_plans",
    "ConfigError",
    "cosine_schedule",
    "create_plugin_host",
    "Decision",
    "explain",
    "group_multipliers",
    "GroupSpec",
    "hookimpl",
    "is_norm_module",
    "LayerDecayError",
    "LayerDecayWarning",
    "LayerSummary",
    "load_optimizer_state",
    "load_rules",
    "MissingExtraError",
    "ModelError",
    "ModelView",
    "param_groups",
    "parse_rules",
    "Plan",
    "PlanComparison",
    "PlanError",
    "PlanMismatchError",
    "PlanRow",
    "plot_plan",
    "PluginError",
    "PluginHost",
    "PluginInfo",
    "Policy",
    "register",
    "scaled",
    "select_recipe",
    "set_lr",
    "strip_wrapper_prefixes",
    "UnknownOptimizerError",
    "UnknownRecipeError",
    "unregister",
    "unwrap",
    "verify",
    "__version__",
]
