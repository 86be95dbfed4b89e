"""The bad-input catalogue: every misuse gives layerdecay's own exception, naming the culprit and the fix.

Also: nothing half-built. A call that fails leaves the model exactly as it was, and no call ever changes it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import layerdecay
from layerdecay import (
    ConfigError,
    Decision,
    LayerDecayError,
    LayerDecayWarning,
    ModelError,
    PlanError,
    PluginError,
    UnknownOptimizerError,
    UnknownRecipeError,
    hookimpl,
    select_recipe,
)

pytestmark = pytest.mark.filterwarnings("ignore:no plugin claimed:layerdecay.LayerDecayWarning")

# -- models and plugins ------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.norm(x))


class Net(nn.Module):
    """embed -> 3 blocks -> head."""

    def __init__(self, depth: int = 3, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(2, dim)
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Flat(nn.Module):
    """No repeated blocks: neither a plugin nor the generic fallback can claim it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.b = nn.Conv1d(3, 3, 1)


class Family:
    """A family plugin for ``Net``: embed -> 0, blocks.i -> i+1, head -> top; recipes like a real family."""

    def __init__(self, name: str = "family", recipes: tuple[str, ...] = ("official", "timm")) -> None:
        self.__name__ = name
        self.recipes = recipes

    @hookimpl
    def layerdecay_num_layers(self, model, recipe):
        if not isinstance(model.model, Net):
            return None
        select_recipe(recipe, self.recipes, owner=f"the {self.__name__} plugin")
        return len(model.model.blocks) + 2

    @hookimpl
    def layerdecay_layer_id(self, model, num_layers):
        if not isinstance(model.model, Net):
            return None

        def layer_id(name: str) -> int:
            if name.startswith("embed."):
                return 0
            if name.startswith("blocks."):
                return int(name.split(".")[1]) + 1
            return num_layers - 1

        return layer_id


def plugin(name: str, **hooks: Any) -> object:
    """A plugin object named ``name`` whose hooks are the given functions (marked here)."""
    namespace = {k: staticmethod(hookimpl(v)) for k, v in hooks.items()}
    cls = type(f"Plugin_{name}", (), namespace)
    obj = cls()
    obj.__name__ = name
    return obj


@pytest.fixture
def host() -> layerdecay.PluginHost:
    """Only the core's defaults and the generic fallback: installed plugins stay out of these tests."""
    return layerdecay.create_plugin_host(autoload=False)


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net()


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerDecayWarning)
        return fn(*args, **kwargs)


# -- numbers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, -0.5, float("nan"), float("inf"), -float("inf"), "0.7", None, True, [0.7]])
def test_layer_decay_must_be_a_positive_finite_number(net, host, value):
    with pytest.raises(ConfigError) as info:
        layerdecay.explain(net, layer_decay=value, host=host)
    message = str(info.value)
    assert "layer_decay" in message
    assert repr(value) in message
    assert isinstance(info.value, ValueError)  # ConfigError is also a ValueError, for generic handlers


def test_layer_decay_above_one_and_one_are_accepted(net, host):
    assert quiet(layerdecay.explain, net, layer_decay=1.0, host=host).scales == (1.0,) * 5
    plan = quiet(layerdecay.explain, net, layer_decay=2.0, host=host, plugins=[Family()])
    assert plan.scales[0] == pytest.approx(2.0**4)


@pytest.mark.parametrize("value", [-1e-8, -1, float("nan"), float("inf"), "0.05"])
def test_weight_decay_must_be_non_negative_and_finite(net, host, value):
    with pytest.raises(ConfigError, match="weight_decay"):
        layerdecay.explain(net, weight_decay=value, host=host)


@pytest.mark.parametrize("value", [0, -1e-3, float("nan"), float("inf"), "1e-3", None])
@pytest.mark.parametrize("api", ["param_groups", "build_optimizer"])
def test_lr_must_be_positive_and_finite(net, host, value, api):
    with pytest.raises(ConfigError) as info:
        if api == "param_groups":
            layerdecay.param_groups(net, lr=value, host=host)
        else:
            layerdecay.build_optimizer(net, "adamw", lr=value, host=host)
    assert str(info.value).startswith("lr must be")
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_min_scale_must_be_within_zero_one(net, host, value):
    with pytest.raises(ConfigError, match="min_scale"):
        layerdecay.explain(net, min_scale=value, host=host)


def test_scale_mode_must_be_known(net, host):
    with pytest.raises(ConfigError, match="scale_mode.*'lr'.*'lr_scale'"):
        layerdecay.param_groups(net, lr=1e-3, scale_mode="scale", host=host)


# -- optimizers ----------------------------------------------------------------------------------------


def test_unknown_optimizer_lists_close_matches(net, host):
    with pytest.raises(UnknownOptimizerError) as info:
        layerdecay.build_optimizer(net, "adamv", lr=1e-3, host=host)
    message = str(info.value)
    assert "'adamv'" in message
    assert "'adamw'" in message and "'adam'" in message  # difflib's close matches
    assert isinstance(info.value, ConfigError)


def test_unknown_optimizer_without_close_match_says_where_names_come_from(net, host):
    with pytest.raises(UnknownOptimizerError, match=r"torch\.optim.*timm"):
        layerdecay.build_optimizer(net, "qqqqqqqq", lr=1e-3, host=host)


def test_unknown_optimizer_fails_before_planning(net):
    calls = []

    def num_layers(model):
        calls.append(model)

    with pytest.raises(UnknownOptimizerError):
        layerdecay.build_optimizer(net, "adamv", lr=1e-3, plugins=[plugin("spy", layerdecay_num_layers=num_layers)])
    assert calls == []


def test_keyword_the_optimizer_does_not_take(net, host):
    with pytest.raises(ConfigError) as info:
        layerdecay.build_optimizer(net, "sgd", lr=1e-3, betas=(0.9, 0.99), host=host)
    message = str(info.value)
    assert "'betas'" in message and "SGD" in message
    assert "momentum" in message and "nesterov" in message  # what it does take


def test_keyword_timm_optimizer_does_not_take(net, host):
    pytest.importorskip("timm")
    with pytest.raises(ConfigError, match=r"'lamb'.*does not take 'momentum'.*betas"):
        layerdecay.build_optimizer(net, "lamb", lr=1e-3, momentum=0.9, host=host)


def test_optimizer_rejecting_a_value_is_a_config_error_with_cause(net, host):
    with pytest.raises(ConfigError) as info:
        layerdecay.build_optimizer(net, "adam", lr=1e-3, betas=(2.0, 0.999), host=host)
    assert "betas=(2.0, 0.999)" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_optimizer_that_is_neither_name_nor_class(net, host):
    with pytest.raises(ConfigError, match="optimizer must be a name or an optimizer class"):
        layerdecay.build_optimizer(net, 3, lr=1e-3, host=host)


# -- recipes -------------------------------------------------------------------------------------------


def test_unknown_recipe_with_generic_fallback_offers_only_timm(net, host):
    with pytest.raises(UnknownRecipeError) as info:
        layerdecay.explain(net, recipe="official", host=host)
    message = str(info.value)
    assert "recipe='official'" in message and "generic fallback" in message
    assert "'timm'" in message
    assert message.count("', '") == 0  # one recipe offered, nothing else listed


def test_unknown_recipe_lists_the_family_recipes(net, host):
    with pytest.raises(UnknownRecipeError) as info:
        layerdecay.explain(net, recipe="beit", host=host, plugins=[Family("fam")])
    message = str(info.value)
    assert "the fam plugin" in message
    assert "'official'" in message and "'timm'" in message


def test_recipe_on_a_model_nobody_claims(host):
    with pytest.raises(UnknownRecipeError, match="no plugin claims"):
        layerdecay.explain(Flat(), recipe="official", host=host)
    plan = quiet(layerdecay.explain, Flat(), recipe="timm", host=host)
    assert plan.owner is None


def test_recipe_must_be_a_string(net, host):
    with pytest.raises(ConfigError, match="recipe must be a string"):
        layerdecay.explain(net, recipe=3, host=host)


# -- models --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["explain", "param_groups", "build_optimizer"])
def test_model_without_trainable_parameters(host, api):
    model = Net().requires_grad_(False)
    with pytest.raises(ModelError, match="Net has no trainable parameters"):
        if api == "explain":
            layerdecay.explain(model, host=host)
        elif api == "param_groups":
            layerdecay.param_groups(model, lr=1.0, host=host)
        else:
            layerdecay.build_optimizer(model, "sgd", lr=1.0, host=host)


def test_model_without_any_parameters(host):
    with pytest.raises(ModelError, match="no trainable parameters"):
        layerdecay.explain(nn.ReLU(), host=host)


@pytest.mark.parametrize("model", [object(), {"w": torch.zeros(2)}, [nn.Linear(2, 2)], torch.zeros(2), None])
def test_not_a_module(host, model):
    with pytest.raises(ModelError) as info:
        layerdecay.explain(model, host=host)
    assert "torch.nn.Module" in str(info.value)
    assert type(model).__name__ in str(info.value)
    assert isinstance(info.value, TypeError)


# -- hook contracts ------------------------------------------------------------------------------------


def claims_three(model):
    return 3


@pytest.mark.parametrize("good_id", [0, 1])  # True and 1.0 are equal to 1: they must not hide behind it
@pytest.mark.parametrize("bad_id", [3, 7, -1, True, 1.0, "1", None])
def test_layer_id_out_of_range_or_wrong_type_names_plugin_and_parameter(net, host, bad_id, good_id):
    rule = plugin("bad-ids", layerdecay_num_layers=claims_three,
                  layerdecay_layer_id=lambda: (lambda name: bad_id if name == "blocks.1.fc.weight" else good_id))
    with pytest.raises(PluginError) as info:
        layerdecay.explain(net, plugins=[rule], host=host)
    assert info.value.plugin == "bad-ids"
    message = str(info.value)
    assert "'bad-ids'" in message and "'blocks.1.fc.weight'" in message
    assert repr(bad_id) in message and "0..2" in message
    assert "LAYERDECAY_DISABLE_PLUGINS=bad-ids" in message


@pytest.mark.parametrize("scales, culprit", [
    ([1.0, -0.5, 1.0, 1.0, 1.0], "-0.5"),
    ([1.0, 0.0, 1.0, 1.0, 1.0], "0.0"),
    ([1.0, math.nan, 1.0, 1.0, 1.0], "nan"),
    ([1.0, math.inf, 1.0, 1.0, 1.0], "inf"),
    ([1.0, "0.5", 1.0, 1.0, 1.0], "'0.5'"),
    ([1.0, None, 1.0, 1.0, 1.0], "None"),
])
def test_bad_scale_names_plugin_and_layer_id(net, host, scales, culprit):
    rule = plugin("bad-scales", layerdecay_lr_scale=lambda num_layers: scales)
    with pytest.raises(PluginError) as info:
        layerdecay.explain(net, plugins=[Family(), rule], host=host)
    assert info.value.plugin == "bad-scales"
    message = str(info.value)
    assert f"scale {culprit} for layer id 1" in message


@pytest.mark.parametrize("answer", [5, "abc", 1.0, b"xx"])
def test_scales_of_the_wrong_type(net, host, answer):
    rule = plugin("scalar-scales", layerdecay_lr_scale=lambda: answer)
    with pytest.raises(PluginError, match="'scalar-scales' answered layerdecay_lr_scale") as info:
        layerdecay.explain(net, plugins=[rule], host=host)
    assert info.value.plugin == "scalar-scales"


def test_wrong_number_of_scales(net, host):
    rule = plugin("short-scales", layerdecay_lr_scale=lambda: [1.0, 1.0])
    with pytest.raises(PluginError, match="2 scales for 5 layer ids") as info:
        layerdecay.explain(net, plugins=[Family(), rule], host=host)
    assert info.value.plugin == "short-scales"


@pytest.mark.parametrize("count", [0, -2, 2.0, "3", True])
def test_num_layers_of_the_wrong_type(net, host, count):
    rule = plugin("bad-count", layerdecay_num_layers=lambda: count)
    with pytest.raises(PluginError, match="int >= 1") as info:
        layerdecay.explain(net, plugins=[rule], host=host)
    assert info.value.plugin == "bad-count"


def test_layer_id_answer_must_be_callable(net, host):
    rule = plugin("not-callable", layerdecay_num_layers=claims_three, layerdecay_layer_id=lambda: {"a": 0})
    with pytest.raises(PluginError, match="function name -> int") as info:
        layerdecay.explain(net, plugins=[rule], host=host)
    assert info.value.plugin == "not-callable"


@pytest.mark.parametrize("ids", [[0, 1], (0,) * 99])
def test_layer_id_list_must_align_with_the_names(net, host, ids):
    rule = plugin("short-list", layerdecay_num_layers=claims_three, layerdecay_layer_id=lambda: list(ids))
    with pytest.raises(PluginError, match=r"list of \d+ ints aligned with model.names") as info:
        layerdecay.explain(net, plugins=[rule], host=host)
    assert info.value.plugin == "short-list" and f"list of {len(ids)} ids" in str(info.value)


def test_layer_id_list_with_a_bad_id_names_the_parameter(net, host):
    def ids(model):
        out = [0] * len(model.names)
        out[-1] = 7
        return out

    rule = plugin("bad-list", layerdecay_num_layers=claims_three, layerdecay_layer_id=ids)
    with pytest.raises(PluginError, match="layer id 7") as info:
        layerdecay.explain(net, plugins=[rule], host=host)
    assert layerdecay.ModelView(net).names[-1] in str(info.value)


def test_claim_without_layer_id(net, host):
    rule = plugin("half", layerdecay_num_layers=lambda model: 99 if isinstance(model.model, Flat) else None)
    with pytest.raises(PluginError, match="no plugin answers layerdecay_layer_id") as info:
        layerdecay.explain(Flat(), plugins=[rule], host=host)
    assert info.value.plugin == "half"


def test_policy_answer_of_the_wrong_type(net, host):
    rule = plugin("bad-policy", layerdecay_param_policy=lambda: (lambda name, param, module: {"weight_decay": False}))
    with pytest.raises(PluginError, match="layerdecay.Decision or None") as info:
        layerdecay.explain(net, plugins=[rule], host=host)
    assert info.value.plugin == "bad-policy"
    assert "'embed.weight'" in str(info.value)


def test_a_wrong_answer_equal_to_a_decision_names_its_own_parameter(net, host):
    """A plain tuple compares equal to the Decision with the same fields; the error still names where it came."""
    no_decay = Decision(weight_decay=False)
    rule = plugin("tuple-policy", layerdecay_param_policy=lambda: (
        lambda name, param, module: tuple(no_decay) if name == "blocks.1.fc.weight" else no_decay))
    with pytest.raises(PluginError, match="layerdecay.Decision or None") as info:
        layerdecay.explain(net, plugins=[rule], host=host)
    assert "'blocks.1.fc.weight'" in str(info.value) and "'embed.weight'" not in str(info.value)


def test_policy_hook_answer_must_be_callable(net, host):
    rule = plugin("policy-not-callable", layerdecay_param_policy=lambda: Decision(weight_decay=False))
    with pytest.raises(PluginError, match="layerdecay_param_policy") as info:
        layerdecay.explain(net, plugins=[rule], host=host)
    assert info.value.plugin == "policy-not-callable"


# -- plugins raising --------------------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def _raise(*_args: Any) -> Any:
    raise Boom("kaput")


@pytest.mark.parametrize("hooks", [
    {"layerdecay_num_layers": lambda model: _raise()},
    {"layerdecay_num_layers": claims_three, "layerdecay_layer_id": lambda model: _raise()},
    {"layerdecay_lr_scale": lambda num_layers: _raise()},
    {"layerdecay_param_policy": lambda model: _raise()},
    # failures inside the functions the hooks returned
    {"layerdecay_num_layers": claims_three, "layerdecay_layer_id": lambda: _raise},
    {"layerdecay_param_policy": lambda: _raise},
], ids=["num_layers", "layer_id", "lr_scale", "param_policy", "layer_id function", "policy function"])
def test_plugin_raising_is_reraised_as_plugin_error_with_cause(net, host, hooks):
    with pytest.raises(PluginError) as info:
        layerdecay.explain(net, plugins=[plugin("boom", **hooks)], host=host)
    assert info.value.plugin == "boom"
    assert "'boom'" in str(info.value) and "Boom" in str(info.value) and "kaput" in str(info.value)
    assert isinstance(info.value.__cause__, Boom)


def test_plugin_raising_layerdecay_errors_passes_them_through(net, host):
    def num_layers(model):
        raise UnknownRecipeError("recipe='x' is not offered by the custom plugin")

    with pytest.raises(UnknownRecipeError, match="custom plugin"):
        layerdecay.explain(net, plugins=[plugin("custom", layerdecay_num_layers=num_layers)], host=host)


def test_register_rejects_an_unknown_hook():
    class Typo:
        __name__ = "typo"

        @hookimpl
        def layerdecay_num_layer(self, model):  # missing "s"
            return 1

    with pytest.raises(PluginError, match="layerdecay_num_layer is not a layerdecay hook") as info:
        layerdecay.register(Typo())
    assert info.value.plugin == "typo"
    assert "layerdecay_num_layers" in str(info.value)  # the known hooks are listed


def test_register_rejects_an_unmarked_hook():
    class Unmarked:
        __name__ = "unmarked"

        def layerdecay_num_layers(self, model):
            return 1

    with pytest.raises(PluginError, match="not marked with @layerdecay.hookimpl"):
        layerdecay.register(Unmarked())


def test_call_plugin_with_unknown_hook(net, host):
    with pytest.raises(PluginError, match="layerdecay_bogus is not a layerdecay hook"):
        layerdecay.explain(net, plugins=[plugin("bogus", layerdecay_bogus=lambda: 1)], host=host)


# -- two plugins claiming one model -----------------------------------------------------------------------


def test_two_plugins_claiming_one_model_later_registered_wins_with_a_warning(net, host):
    first, second = Family("first"), Family("second")
    for order, winner, loser in (([first, second], "second", "first"), ([second, first], "first", "second")):
        with pytest.warns(LayerDecayWarning) as record:
            plan = layerdecay.explain(net, plugins=order, host=host)
        assert plan.owner == winner
        assert all(r.layer_by == winner for r in plan.rows)
        claims = [str(w.message) for w in record if "claim" in str(w.message)]
        assert len(claims) == 1
        assert f"'{winner}'" in claims[0] and f"'{loser}'" in claims[0]
        assert "registered later" in claims[0]
        assert f"LAYERDECAY_DISABLE_PLUGINS={winner}" in claims[0]


def test_rival_claim_is_an_error_with_strict(net, host):
    with pytest.raises(PlanError, match="2 plugins claim Net"):
        layerdecay.explain(net, plugins=[Family("a"), Family("b")], host=host, strict=True)


def test_rival_that_rejects_the_recipe_still_counts_as_a_claim(net, host):
    picky = Family("picky", recipes=("official",))
    mine = Family("mine", recipes=("mine",))
    with pytest.warns(LayerDecayWarning, match="'mine' and 'picky'"):
        plan = layerdecay.explain(net, recipe="mine", plugins=[picky, mine], host=host)
    assert plan.owner == "mine"


def test_the_generic_fallback_is_no_rival(net, host):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerDecayWarning)
        plan = layerdecay.explain(net, plugins=[Family("only")], host=host)
    assert plan.owner == "only"
    assert plan.warnings == ()


def test_rival_probing_is_cheap_each_claim_hook_asked_once(net, host):
    calls: list[str] = []

    class Counting(Family):
        @hookimpl
        def layerdecay_num_layers(self, model, recipe):
            calls.append(self.__name__)
            return super().layerdecay_num_layers(model, recipe)

    quiet(layerdecay.explain, net, plugins=[Counting("a"), Counting("b"), Counting("c")], host=host)
    assert sorted(calls) == ["a", "b", "c"]


# -- patterns ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patterns, fragment", [
    (["re:("], "not a valid regular expression"),
    (["re:[a-"], "not a valid regular expression"),
    (["re:"], "empty regular expression"),
    ([""], "is empty"),
    ([" head"], "surrounding spaces"),
    ([3], "must be strings, got 3 (int)"),
    ([None], "must be strings"),
    (5, "must be a pattern string or a list"),
    ({"head": 1}, "must be a pattern string or a list"),
    (b"head", "must be a pattern string or a list"),
])
def test_malformed_no_weight_decay_patterns(net, host, patterns, fragment):
    with pytest.raises(ConfigError) as info:
        layerdecay.explain(net, no_weight_decay=patterns, host=host)
    assert "no_weight_decay" in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize("kind", ["Linear", (nn.Linear, "LayerNorm"), 3, None])
def test_modules_of_type_names_a_kind_it_cannot_use(net, kind):
    with pytest.raises(ConfigError) as info:
        layerdecay.ModelView(net).modules_of_type(kind)
    assert "modules_of_type takes a class, a tuple of classes or a function of the class" in str(info.value)
    assert repr(kind) in str(info.value)


@pytest.mark.parametrize("mapping, fragment", [
    ({"re:(": 2.0}, "not a valid regular expression"),
    ({"": 2.0}, "is empty"),
    ({3: 2.0}, "must be strings"),
    ({"head": 0}, "lr_mult['head'] must be > 0"),
    ({"head": -1.0}, "lr_mult['head'] must be > 0"),
    ({"head": math.nan}, "lr_mult['head'] must be finite"),
    ({"head": "10"}, "lr_mult['head'] must be a number"),
    (["head"], "lr_mult must be a mapping"),
    ("head", "lr_mult must be a mapping"),
])
def test_malformed_lr_mult(net, host, mapping, fragment):
    with pytest.raises(ConfigError) as info:
        layerdecay.explain(net, lr_mult=mapping, host=host)
    assert fragment in str(info.value)


def test_pattern_matching_nothing_warns_naming_it(net, host):
    with pytest.warns(LayerDecayWarning) as record:
        plan = layerdecay.explain(net, no_weight_decay=["head", "hed"], lr_mult={"embedd": 2.0}, host=host,
                                  plugins=[Family()])
    messages = [str(w.message) for w in record]
    assert any("no_weight_decay pattern 'hed' matched no trainable parameter" in m for m in messages)
    assert any("lr_mult pattern 'embedd' matched no trainable parameter" in m for m in messages)
    assert not any("'head'" in m for m in messages)
    assert plan.row("head.weight").weight_decay == 0.0


def test_pattern_matching_only_frozen_parameters_warns(net, host):
    net.head.requires_grad_(False)
    with pytest.warns(LayerDecayWarning, match="'head' matched no trainable parameter"):
        layerdecay.explain(net, no_weight_decay="head", host=host, plugins=[Family()])


def test_pattern_matching_nothing_is_an_error_with_strict(net, host):
    with pytest.raises(PlanError, match="'nothing' matched no trainable parameter"):
        layerdecay.explain(net, no_weight_decay=["nothing"], host=host, plugins=[Family()], strict=True)


def test_every_error_is_a_layerdecay_error():
    for cls in (ConfigError, UnknownRecipeError, UnknownOptimizerError, ModelError, PluginError, PlanError,
                layerdecay.PlanMismatchError):
        assert issubclass(cls, LayerDecayError)
    assert issubclass(LayerDecayWarning, UserWarning)


# -- nothing half-built, nothing mutated -----------------------------------------------------------------------


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything about ``model`` an API call could change, copied."""
    modules = list(model.named_modules(remove_duplicate=False))
    return {
        "modules": [(name, id(m), type(m), m.training) for name, m in modules],
        "params": [(name, id(p), p.requires_grad, p.dtype, p.device, p.detach().clone(), p.grad)
                   for name, p in model.named_parameters(remove_duplicate=False)],
        "buffers": [(name, id(b), b.clone()) for name, b in model.named_buffers(remove_duplicate=False)],
        "attributes": [(name, sorted(vars(m))) for name, m in modules],
        "hooks": [(name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(m._state_dict_hooks), len(m._load_state_dict_pre_hooks)) for name, m in modules],
        "state_dict_keys": list(model.state_dict()),
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["modules"] == after["modules"]
    assert before["attributes"] == after["attributes"]
    assert before["hooks"] == after["hooks"]
    assert before["state_dict_keys"] == after["state_dict_keys"]
    assert len(before["params"]) == len(after["params"])
    for b, a in zip(before["params"], after["params"], strict=True):
        assert b[:5] == a[:5]
        assert torch.equal(b[5], a[5])
        assert a[6] is None
    for b, a in zip(before["buffers"], after["buffers"], strict=True):
        assert b[:2] == a[:2] and torch.equal(b[2], a[2])


class NetWithExtras(Net):
    """Buffers, a frozen part, a hook and eval mode: all of it must survive."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.embed.requires_grad_(False)
        self.blocks[0].register_forward_hook(lambda *a: None)
        self.blocks[1].eval()
        self.head.weight = self.embed.weight  # tied (and frozen)


@pytest.mark.parametrize("call", [
    lambda m, h: layerdecay.explain(m, host=h),
    lambda m, h: layerdecay.explain(m, host=h, plugins=[Family()], no_weight_decay=["blocks.*"],
                                    lr_mult={"head": 10.0}),
    lambda m, h: layerdecay.param_groups(m, lr=1e-3, host=h),
    lambda m, h: layerdecay.param_groups(m, lr=1e-3, host=h, scale_mode="lr_scale", named=False),
    lambda m, h: layerdecay.build_optimizer(m, "adamw", lr=1e-3, host=h),
    lambda m, h: layerdecay.build_optimizer(m, "sgd", lr=1e-3, momentum=0.9, host=h, plugins=[Family()]),
], ids=["explain", "explain+options", "param_groups", "param_groups_lr_scale", "adamw", "sgd"])
def test_no_call_mutates_the_model(host, call):
    torch.manual_seed(0)
    model = NetWithExtras()
    before = snapshot(model)
    quiet(call, model, host)
    assert_same(before, snapshot(model))


def _fail_mid_plan():
    def layer_id(name: str) -> int:
        if name.startswith("blocks.2"):
            raise Boom("half way")
        return 0

    return layer_id


@pytest.mark.parametrize("call, error", [
    (lambda m, h: layerdecay.build_optimizer(m, "sgd", lr=1e-3, betas=(0.9, 0.9), host=h), ConfigError),
    (lambda m, h: layerdecay.build_optimizer(m, "adam", lr=1e-3, betas=(2.0, 0.9), host=h), ConfigError),
    (lambda m, h: layerdecay.build_optimizer(m, "nope", lr=1e-3, host=h), UnknownOptimizerError),
    (lambda m, h: layerdecay.build_optimizer(m, "adamw", lr=1e-3, host=h, recipe="nope"), UnknownRecipeError),
    (lambda m, h: layerdecay.build_optimizer(
        m, "adamw", lr=1e-3, host=h,
        plugins=[plugin("mid", layerdecay_num_layers=claims_three, layerdecay_layer_id=_fail_mid_plan)]),
     PluginError),
    (lambda m, h: layerdecay.param_groups(
        m, lr=1e-3, host=h, plugins=[plugin("neg", layerdecay_lr_scale=lambda num_layers: [-1.0] * num_layers)]),
     PluginError),
    (lambda m, h: layerdecay.explain(m, host=h, no_weight_decay=["x"], strict=True), PlanError),
], ids=["bad-kwarg", "bad-value", "unknown-optimizer", "unknown-recipe", "plugin-mid-plan", "bad-scale", "strict"])
def test_failed_build_leaves_the_model_untouched(host, call, error):
    torch.manual_seed(0)
    model = NetWithExtras()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerDecayWarning)
        with pytest.raises(error):
            call(model, host)
    assert_same(before, snapshot(model))


def test_a_training_step_after_a_failed_build_is_unaffected(host):
    """A failed build leaves no optimizer state anywhere: a fresh optimizer then behaves like plain torch."""
    torch.manual_seed(0)
    model = Net()
    reference = Net()
    reference.load_state_dict(model.state_dict())
    with pytest.raises(ConfigError):
        layerdecay.build_optimizer(model, "sgd", lr=0.1, betas=(0.9, 0.9), host=host, layer_decay=1.0)
    optimizer = quiet(layerdecay.build_optimizer, model, "sgd", lr=0.1, host=host, layer_decay=1.0,
                      weight_decay=0.0)
    plain = torch.optim.SGD(reference.parameters(), lr=0.1)
    x = torch.randn(3, 2)
    for opt, m in ((optimizer, model), (plain, reference)):
        opt.zero_grad()
        m(x).sum().backward()
        opt.step()
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.allclose(a, b), name
