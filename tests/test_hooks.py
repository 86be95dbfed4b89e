"""Each hook exercised through plugins: per call, at run time, precedence over built-ins."""

from __future__ import annotations

import pytest

import layerdecay
from tests.models import TinyNet, TinyRule


class ReverseScales:
    """A scale provider: linear instead of exponential."""

    __name__ = "linear-scales"

    @layerdecay.hookimpl
    def layerdecay_lr_scale(self, num_layers, layer_decay):
        return [1.0 - (1.0 - layer_decay) * (num_layers - 1 - i) / (num_layers - 1) for i in range(num_layers)]


class EverythingInTwoLayers:
    """Overrides TinyRule: blocks 0-1 -> 0, the rest -> 1."""

    __name__ = "two-layers"

    @layerdecay.hookimpl
    def layerdecay_num_layers(self, model):
        return 2 if isinstance(model.model, TinyNet) else None

    @layerdecay.hookimpl
    def layerdecay_layer_id(self, model):
        if not isinstance(model.model, TinyNet):
            return None
        return lambda name: 0 if name.startswith(("embed", "pos_embed", "cls_token", "blocks.0.", "blocks.1.")) else 1


def test_num_layers_and_layer_id_hooks(tiny, bare_host):
    plan = layerdecay.explain(tiny, plugins=[TinyRule()], host=bare_host)
    assert plan.owner == "tiny-rule" and plan.fallback is None
    assert {r.layer_by for r in plan.rows} == {"tiny-rule"}


def test_lr_scale_hook(tiny, tiny_host):
    plan = layerdecay.explain(tiny, layer_decay=0.5, plugins=[ReverseScales()], host=tiny_host)
    assert plan.scales == pytest.approx((0.5, 0.6, 0.7, 0.8, 0.9, 1.0))


def test_later_plugin_overrides_earlier(tiny, tiny_host):
    with pytest.warns(layerdecay.LayerDecayWarning, match="'two-layers' and 'tiny-rule'"):
        plan = layerdecay.explain(tiny, plugins=[EverythingInTwoLayers()], host=tiny_host)
    assert plan.num_layers == 2 and plan.owner == "two-layers"
    assert plan.row("blocks.1.fc.weight").layer_id == 0 and plan.row("blocks.2.fc.weight").layer_id == 1


def test_per_call_plugins_do_not_leak(tiny, tiny_host):
    with pytest.warns(layerdecay.LayerDecayWarning):
        layerdecay.explain(tiny, plugins=[EverythingInTwoLayers()], host=tiny_host)
    assert layerdecay.explain(tiny, host=tiny_host).num_layers == 6


def test_runtime_register_and_unregister(tiny):
    rule = TinyRule()
    layerdecay.register(rule)
    try:
        assert layerdecay.explain(tiny).owner == "tiny-rule"
    finally:
        layerdecay.unregister(rule)
    with pytest.warns(layerdecay.LayerDecayWarning, match="generic fallback"):
        assert layerdecay.explain(tiny).owner == "generic"


def test_runtime_rule_overrides_builtin_fallback(tiny, bare_host):
    with pytest.warns(layerdecay.LayerDecayWarning):
        assert layerdecay.explain(tiny, host=bare_host).owner == "generic"
    assert layerdecay.explain(tiny, host=bare_host.extended([TinyRule()], source="runtime")).owner == "tiny-rule"


def test_unknown_hook_is_rejected():
    class Typo:
        __name__ = "typo"

        @layerdecay.hookimpl
        def layerdecay_layer_ids(self, model):
            return None

    with pytest.raises(layerdecay.PluginError, match="layerdecay_layer_ids is not a layerdecay hook"):
        layerdecay.register(Typo())


def test_unmarked_hook_is_rejected():
    class Unmarked:
        __name__ = "unmarked"

        def layerdecay_layer_id(self, model):
            return None

    with pytest.raises(layerdecay.PluginError, match="not marked with @layerdecay.hookimpl"):
        layerdecay.register(Unmarked())


def test_plugin_raising_is_named(tiny, tiny_host):
    class Broken:
        __name__ = "broken"

        @layerdecay.hookimpl
        def layerdecay_num_layers(self, model):
            raise RuntimeError("boom")

    with pytest.raises(layerdecay.PluginError, match="'broken' raised RuntimeError") as info:
        layerdecay.explain(tiny, plugins=[Broken()], host=tiny_host)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_plugins_listing_names_hooks(tiny_host):
    info = {p.name: p for p in tiny_host.plugins}
    assert info["core"].hooks == ("layerdecay_lr_scale", "layerdecay_param_policy")
    assert info["generic"].hooks == ("layerdecay_layer_id", "layerdecay_num_layers")
    assert info["tiny-rule"].source == "call"


def test_disabling_the_generic_fallback(tiny):
    host = layerdecay.create_plugin_host(autoload=False, disable=["generic"])
    with pytest.warns(layerdecay.LayerDecayWarning, match="no effect"):
        plan = layerdecay.explain(tiny, host=host)
    assert plan.owner is None and plan.num_layers == 1


class TinyRuleByList(TinyRule):
    """TinyRule answering with the ids themselves, aligned with the view's names."""

    __name__ = "tiny-rule-list"

    @layerdecay.hookimpl
    def layerdecay_layer_id(self, model, num_layers):
        layer_id = TinyRule.layerdecay_layer_id(self, model, num_layers)
        return None if layer_id is None else [layer_id(name) for name in model.names]


def test_layer_ids_as_a_list_plan_like_the_function(tiny):
    tiny.blocks[1].requires_grad_(False)  # frozen parameters keep their place in the list
    by_function = layerdecay.explain(tiny, host=layerdecay.create_plugin_host(autoload=False, plugins=[TinyRule()]))
    by_list = layerdecay.explain(tiny, host=layerdecay.create_plugin_host(autoload=False, plugins=[TinyRuleByList()]))
    assert by_list.owner == "tiny-rule-list"
    assert [(r.name, r.layer_id, r.lr_mult, r.weight_decay) for r in by_list.rows] == [
        (r.name, r.layer_id, r.lr_mult, r.weight_decay) for r in by_function.rows
    ]
    assert {r.layer_id for r in by_list.rows} == {0, 1, 3, 4, 5}  # blocks.1 (id 2) is frozen: no gap warning
    assert not by_list.warnings
