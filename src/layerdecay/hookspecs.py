"""The hook specifications: one per role. Each spec is the documentation of its hook.

Every hook is asked once per model, never once per parameter: the answers that concern parameters are
functions (or sequences) that the core then applies in a tight loop. Hooks are called with keywords only;
an implementation may accept any subset of the arguments, by name.

Implement them in any object (a module, a class instance) decorated with :data:`layerdecay.hookimpl`,
and expose it under the entry-point group ``layerdecay`` or pass it as ``plugins=[...]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from layerdecay._markers import hookspec

if TYPE_CHECKING:
    from layerdecay.model_view import ModelView
    from layerdecay.policy import Policy


@hookspec(firstresult=True)
def layerdecay_num_layers(model: ModelView, recipe: str | None) -> int | None:
    """Claim the model and say how many layer ids its plan has (layer-count provider).

    firstresult: the first non-None answer wins. Later-registered plugins are asked first, so a rule
    registered at run time overrides an installed plugin, and the core's generic fallback (``trylast``)
    answers only when no plugin claims the model. The plugin that answers is recorded in the plan as the
    model's owner.

    Args:
        model: The model's view: unwrapped root, normalized names, owning modules, a per-plan ``cache``.
        recipe: The recipe the caller asked for, or None for the family's published recipe. A plugin
            that owns the model but does not offer the recipe raises :class:`layerdecay.UnknownRecipeError`
            (see :func:`layerdecay.select_recipe`).

    Returns:
        The number of layer ids ``N >= 1``: ids run ``0 .. N-1`` and ``N-1`` is the top (scale 1.0).
        Count from the model's structure, frozen parameters included, so freezing never shifts scales.
        None when the model is not yours.

    Example::

        @hookimpl
        def layerdecay_num_layers(model, recipe):
            blocks = model.module("encoder.layers")
            return None if blocks is None else len(blocks) + 2
    """


@hookspec(firstresult=True)
def layerdecay_layer_id(
    model: ModelView, recipe: str | None, num_layers: int
) -> Callable[[str], int] | Sequence[int] | None:
    """Give the function that maps a parameter name to its layer id (layer identifier).

    firstresult: the first non-None answer wins, in the same order as ``layerdecay_num_layers``.

    Args:
        model: The model's view (see ``layerdecay_num_layers``).
        recipe: The recipe asked for, or None for the default.
        num_layers: The count decided by ``layerdecay_num_layers``.

    Returns:
        A function ``layer_id(name) -> int`` called once for every trainable parameter with its
        normalized name; it must return an int in ``0 .. num_layers-1``. Parameters you do not
        recognize (necks, heads) belong to the top layer, ``num_layers - 1``. Or, when the plugin
        has worked out every id anyway, the ids themselves: a list (or tuple) with one id per
        parameter of ``model.names``, in that order, frozen ones included; nothing is then called per
        parameter. None when the model is not yours.

    Example::

        @hookimpl
        def layerdecay_layer_id(model, recipe, num_layers):
            def layer_id(name):
                if name.startswith("embed"):
                    return 0
                if name.startswith("encoder.layers."):
                    return int(name.split(".")[2]) + 1
                return num_layers - 1
            return layer_id
    """


@hookspec
def layerdecay_param_policy(model: ModelView, recipe: str | None) -> Policy | None:
    """Give a policy: weight decay on or off (with the reason), lr/wd multipliers, exclusion.

    Answers are combined field by field: for each parameter, every policy is asked, and for each field
    of :class:`layerdecay.Decision` the first policy (in hook order: later-registered plugins first,
    the core's defaults last) with a non-None value decides it. So a user rule overrides a plugin, which
    overrides the core's "weight decay by meaning" defaults, one field at a time.

    Args:
        model: The model's view (see ``layerdecay_num_layers``).
        recipe: The recipe asked for, or None for the default.

    Returns:
        A function ``policy(name, param, module) -> Decision | None`` called for every trainable
        parameter with its normalized name, the tensor and the module that owns it; None (for the
        function or for one parameter) means no opinion. Return shared :class:`~layerdecay.Decision`
        constants rather than building one per call: this runs in the planning loop. The function may
        also have a ``decide_all(names, params, modules)`` method answering for aligned sequences of
        parameters at once (one answer each, the same as calling the function on each); the core then
        calls that instead, once per plan, as it does for its own policy.

    Example::

        NO_WD = Decision(weight_decay=False, reason="adapter scale")

        @hookimpl
        def layerdecay_param_policy(model, recipe):
            return lambda name, param, module: NO_WD if name.endswith(".adapter_scale") else None
    """


@hookspec(firstresult=True)
def layerdecay_lr_scale(
    model: ModelView, recipe: str | None, num_layers: int, layer_decay: float
) -> Sequence[float] | None:
    """Give the learning-rate multiplier of every layer id (scale provider).

    firstresult; the core's default, ``layer_decay ** (num_layers - 1 - layer_id)``, is ``trylast``.

    Args:
        model: The model's view (see ``layerdecay_num_layers``).
        recipe: The recipe asked for, or None for the default.
        num_layers: The number of layer ids.
        layer_decay: The decay factor asked for (1.0 means no decay).

    Returns:
        ``num_layers`` finite, positive floats, index = layer id; None to leave it to the next plugin.

    Example::

        @hookimpl
        def layerdecay_lr_scale(num_layers, layer_decay):
            return [1.0 - (1.0 - layer_decay) * (num_layers - 1 - i) / num_layers for i in range(num_layers)]
    """
