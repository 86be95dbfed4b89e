"""The core's "weight decay by meaning" policy, shape by shape and library by library."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn

import layerdecay


class GlobalResponseNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))


class MyRMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))


class Everything(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.rms = nn.RMSNorm(4)
        self.custom_norm = MyRMSNorm(4)
        self.grn = GlobalResponseNorm(4)
        self.layer_scale = nn.Parameter(torch.ones(4, 1, 1))  # torchvision's ConvNeXt layout
        self.ls1 = nn.Module()
        self.ls1.gamma = nn.Parameter(torch.ones(4))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.reg_token = nn.Parameter(torch.zeros(1, 4, 4))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 5, 4))
        self.attn = nn.Module()
        self.attn.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.attn.logit_scale = nn.Parameter(torch.zeros(2, 1, 1))
        self.attn.cpb_mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2, bias=False))
        self.attn.q_bias = nn.Parameter(torch.zeros(4))
        self.word_embeddings = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 4)


EXPECTED = {
    "conv.weight": (True, "weight"),
    "conv.bias": (False, "bias"),
    "bn.weight": (False, "norm weight (BatchNorm2d)"),
    "bn.bias": (False, "norm weight (BatchNorm2d)"),
    "gn.weight": (False, "norm weight (GroupNorm)"),
    "ln.weight": (False, "norm weight (LayerNorm)"),
    "rms.weight": (False, "norm weight (RMSNorm)"),
    "custom_norm.scale": (False, "norm weight (MyRMSNorm)"),
    "grn.gamma": (False, "norm weight (GlobalResponseNorm)"),
    "grn.beta": (False, "norm weight (GlobalResponseNorm)"),
    "layer_scale": (False, "layer scale"),
    "ls1.gamma": (False, "layer scale"),
    "cls_token": (False, "token"),
    "reg_token": (False, "token"),
    "distillation_token": (False, "token"),
    "pos_embed": (False, "position embedding"),
    "position_embeddings": (False, "position embedding"),
    "attn.relative_position_bias_table": (False, "relative position"),
    "attn.logit_scale": (False, "attention logit scale"),
    "attn.cpb_mlp.0.weight": (False, "relative position"),
    "attn.cpb_mlp.0.bias": (False, "bias"),
    "attn.cpb_mlp.2.weight": (False, "relative position"),
    "attn.q_bias": (False, "bias"),
    "word_embeddings.weight": (True, "weight"),
    "fc.weight": (True, "weight"),
    "fc.bias": (False, "bias"),
}


def test_weight_decay_by_meaning(bare_host):
    plan = layerdecay.explain(Everything(), weight_decay=0.1, layer_decay=1.0, host=bare_host)
    got = {r.name: (r.weight_decay > 0, r.reason) for r in plan.rows}
    for name, expected in EXPECTED.items():
        assert got[name] == expected, name
    assert all(r.decay_by == "core" for r in plan.rows)


@pytest.mark.parametrize("frozen", [False, True], ids=["all-trainable", "partly-frozen"])
def test_full_names_overrule_only_what_the_rank_would_decide(bare_host, frozen):
    """The model's lists beat a relative-position marker; neither overrules the owner's type or the local name.
    With a frozen parameter the policy is asked about a subset of the view, which it answers the same way."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rel_pos = nn.Linear(4, 4)  # a marker in the name of a plain layer
            self.table = nn.Module()
            self.table.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))  # marked and listed
            self.norm_rel_pos = nn.LayerNorm(4)  # marked and listed, but a norm
            self.plain = nn.Parameter(torch.zeros(4))
            self.fc = nn.Linear(4, 4)

        def no_weight_decay(self):
            return {"table.relative_position_bias_table", "norm_rel_pos.weight", "rel_pos.bias"}

    model = Net()
    if frozen:
        model.fc.bias.requires_grad_(False)
    plan = layerdecay.explain(model, layer_decay=1.0, host=bare_host)
    assert {r.name: r.reason for r in plan.rows} == {
        "rel_pos.weight": "relative position",
        "rel_pos.bias": "bias",
        "table.relative_position_bias_table": "model.no_weight_decay()",
        "norm_rel_pos.weight": "norm weight (LayerNorm)",
        "norm_rel_pos.bias": "norm weight (LayerNorm)",
        "plain": "1-D tensor",
        "fc.weight": "weight",
        **({} if frozen else {"fc.bias": "bias"}),
    }


def test_model_lists_and_keywords(bare_host):
    class Listed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.inner = Inner()

        def no_weight_decay(self):
            return {"a.weight"}

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.special_proj = nn.Linear(4, 4)

        def no_weight_decay_keywords(self):
            return {"special"}

    plan = layerdecay.explain(Listed(), layer_decay=1.0, host=bare_host)
    assert plan.row("a.weight").weight_decay == 0.0
    assert plan.row("b.weight").weight_decay == 0.05
    assert plan.row("inner.special_proj.weight").reason == "model.no_weight_decay()"


def test_same_meaning_same_decision_whatever_the_shape(bare_host):
    """A layer scale is [C] in timm and [C,1,1] in torchvision; GRN is [4C] in timm, 4-D in HF."""

    class TimmStyle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(4))
            self.grn = GlobalResponseNorm(4)
            self.grn.gamma = nn.Parameter(torch.ones(4))

    class TorchvisionStyle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer_scale = nn.Parameter(torch.ones(4, 1, 1))
            self.grn = GlobalResponseNorm(4)

    for model in (TimmStyle(), TorchvisionStyle()):
        plan = layerdecay.explain(model, layer_decay=1.0, host=bare_host)
        assert all(r.weight_decay == 0.0 for r in plan.rows)


def test_plugin_policy_overrides_core_one_field_at_a_time(tiny, tiny_host):
    class HeadRule:
        __name__ = "head-rule"

        @layerdecay.hookimpl
        def layerdecay_param_policy(self, model):
            ten_x = layerdecay.Decision(lr_mult=10.0)
            no_wd = layerdecay.Decision(weight_decay=False, reason="frozen-ish embed")

            def policy(name, param, module):
                if name.startswith("head."):
                    return ten_x
                if name == "embed.weight":
                    return no_wd
                return None

            return policy

    plan = layerdecay.explain(tiny, plugins=[HeadRule()], host=tiny_host)
    head = plan.row("head.weight")
    assert head.lr_mult == pytest.approx(10.0) and head.weight_decay == 0.05 and head.decay_by == "core"
    embed = plan.row("embed.weight")
    assert embed.weight_decay == 0.0 and embed.decay_by == "head-rule" and embed.reason == "frozen-ish embed"


def test_exclusion_leaves_parameter_out_of_the_optimizer(tiny, tiny_host):
    class Exclude:
        __name__ = "exclude-norm"

        @layerdecay.hookimpl
        def layerdecay_param_policy(self):
            out = layerdecay.Decision(exclude=True)
            return lambda name, param, module: out if name.startswith("norm.") else None

    plan = layerdecay.explain(tiny, plugins=[Exclude()], host=tiny_host)
    assert plan.row("norm.weight").excluded and plan.row("norm.weight").group == ""
    groups = plan.param_groups(0.1, named=True)
    assert "norm.weight" not in {n for g in groups for n, _ in g["params"]}


class ColumnRule:
    """A policy answering a whole column at once; calling it per parameter must never be needed."""

    __name__ = "column-rule"

    def __init__(self, answers_per_call: int | None = None) -> None:
        self.columns: list[int] = []
        self.answers_per_call = answers_per_call

    @layerdecay.hookimpl
    def layerdecay_param_policy(self):
        rule = self
        no_wd = layerdecay.Decision(weight_decay=False, reason="column rule")

        class Policy:
            def __call__(self, name, param, module):
                raise AssertionError("the planner calls decide_all when a policy has it")

            def decide_all(self, names, params, modules):
                rule.columns.append(len(names))
                answers = [no_wd if n.startswith("head.") else None for n in names]
                return answers[: rule.answers_per_call] if rule.answers_per_call is not None else answers

        return Policy()


def test_a_policy_with_decide_all_is_asked_once_for_every_trainable_parameter(tiny, tiny_host):
    tiny.embed.weight.requires_grad_(False)
    rule = ColumnRule()
    plan = layerdecay.explain(tiny, plugins=[rule], host=tiny_host)
    assert rule.columns == [len(plan.rows)]
    assert len(plan.rows) == sum(p.requires_grad for p in tiny.parameters())
    assert plan.row("head.weight").weight_decay == 0.0 and plan.row("head.weight").decay_by == "column-rule"
    assert plan.row("blocks.0.fc.weight").weight_decay == 0.05 and plan.row("blocks.0.fc.weight").decay_by == "core"


def test_decide_all_with_too_few_answers_names_the_plugin(tiny, tiny_host):
    with pytest.raises(layerdecay.PluginError, match="'column-rule' answered 1 decisions for") as info:
        layerdecay.explain(tiny, plugins=[ColumnRule(answers_per_call=1)], host=tiny_host)
    assert info.value.plugin == "column-rule"


def test_meaning_policy_answers_a_column_as_it_answers_each_parameter():
    from layerdecay.policy import meaning_policy

    model = Everything()
    view = layerdecay.ModelView(model)
    policy = meaning_policy(view)
    column = policy.decide_all(view.names, view.params, view.owners)
    assert column == [policy(n, p, o) for n, p, o in zip(view.names, view.params, view.owners, strict=True)]
    assert [(d.weight_decay, d.reason) for n, d in zip(view.names, column, strict=True) if n in EXPECTED] == [
        EXPECTED[n] for n in view.names if n in EXPECTED
    ]


def test_model_keywords_match_by_substring_the_empty_one_everything(bare_host):
    class Keyworded(nn.Module):
        def __init__(self, keywords: list[str]) -> None:
            super().__init__()
            self.keywords = keywords
            self.attn = nn.Linear(4, 4)
            self.mlp = nn.Linear(4, 4)

        def no_weight_decay_keywords(self):
            return self.keywords

    plan = layerdecay.explain(Keyworded(["attn"]), layer_decay=1.0, host=bare_host)
    assert plan.row("attn.weight").reason == "model.no_weight_decay()" and plan.row("attn.weight").weight_decay == 0.0
    assert plan.row("mlp.weight").weight_decay == 0.05
    everything = layerdecay.explain(Keyworded([""]), layer_decay=1.0, host=bare_host)
    assert all(r.weight_decay == 0.0 for r in everything.rows)


def _plan_unclaimed(model: nn.Module, host: layerdecay.PluginHost) -> layerdecay.Plan:
    """The plan of a model no plugin claims (the generic fallback's warning is expected)."""
    with pytest.warns(layerdecay.LayerDecayWarning, match="no plugin claimed"):
        return layerdecay.explain(model, layer_decay=1.0, host=host)


def _pairs(listing):
    return [(n, id(p)) for n, p in listing]


class ListsItsTables(nn.Module):
    """A model whose ``no_weight_decay()`` walks its own parameters, as timm's Swin and BEiT do, and keeps what
    each way of asking answered."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Module() for _ in range(2))
        for block in self.blocks:
            block.table = nn.Parameter(torch.zeros(3, 3))
            block.proj = nn.Linear(3, 3)

    def no_weight_decay(self):
        self.answers: dict[str, list[tuple[str, int]] | str] = {}
        plain = self.named_parameters()
        self.answers["plain type"] = type(plain).__name__
        self.answers["plain"] = _pairs(plain)
        self.answers["prefixed"] = _pairs(self.named_parameters(prefix="m"))
        self.answers["own only"] = _pairs(self.named_parameters(recurse=False))
        self.answers["parameters"] = [id(p) for p in self.parameters()]
        return {n for n, _ in self.named_parameters() if n.endswith("table")}


def test_a_model_listing_its_own_parameters_is_answered_from_the_walk(bare_host):
    model = ListsItsTables()
    attributes = set(vars(model))
    plan = _plan_unclaimed(model, bare_host)
    assert set(vars(model)) == attributes | {"answers"}  # what the method wrote, on the model itself; nothing else
    answers = model.answers
    assert answers["plain type"] == "list_iterator"  # the walk's own pairs, not a second walk
    torch_listing = nn.Module.named_parameters
    assert answers["plain"] == _pairs(torch_listing(model))
    assert answers["prefixed"] == _pairs(torch_listing(model, prefix="m"))
    assert answers["own only"] == [] and answers["parameters"] == [id(p) for p in model.parameters()]
    assert {r.name for r in plan.rows if r.reason == "model.no_weight_decay()"} == {"blocks.0.table", "blocks.1.table"}
    assert plan.row("blocks.0.table").weight_decay == 0.0 and plan.row("blocks.0.proj.weight").weight_decay == 0.05


def test_a_nested_listing_names_parameters_relative_to_its_module(bare_host):
    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(3, 3)
            self.backbone = ListsItsTables()

    model = Detector()
    plan = _plan_unclaimed(model, bare_host)
    assert model.backbone.answers["plain"] == _pairs(nn.Module.named_parameters(model.backbone))
    assert {r.name for r in plan.rows if r.reason == "model.no_weight_decay()"} == {
        "backbone.blocks.0.table", "backbone.blocks.1.table"}


def test_a_listing_under_inner_wrappers_or_sharing_is_torchs_own(bare_host):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    wrapped = ListsItsTables()
    wrapped.blocks[0] = checkpoint_wrapper(wrapped.blocks[0])  # as activation checkpointing leaves a model
    tied = ListsItsTables()
    tied.blocks[1].proj.weight = tied.blocks[0].proj.weight
    for model in (wrapped, tied):
        plan = _plan_unclaimed(model, bare_host)
        assert model.answers["plain type"] == "generator"
        assert model.answers["plain"] == _pairs(nn.Module.named_parameters(model))
        # the wrapper's component in the model's own list is dropped, as it is from the plan's names
        assert {r.name for r in plan.rows if r.reason == "model.no_weight_decay()"} == {
            "blocks.0.table", "blocks.1.table"}


class OwnListing(ListsItsTables):
    calls = 0

    def named_parameters(self, *args, **kwargs):
        OwnListing.calls += 1
        return super().named_parameters(*args, **kwargs)


class WatchesSubclasses(ListsItsTables):
    seen: ClassVar[list[type]] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        WatchesSubclasses.seen.append(cls)


class Finalized(ListsItsTables):
    def __del__(self):
        pass


class AlsoADict(ListsItsTables, dict):  # a C-level base: object.__new__ cannot make a twin of it
    __hash__ = object.__hash__  # hashable by identity, as torch's listing needs


@pytest.mark.parametrize("cls", [OwnListing, WatchesSubclasses, Finalized, AlsoADict])
def test_a_class_that_lists_its_own_way_or_watches_subclasses_is_asked_itself(bare_host, cls):
    """A class's own listing is its to answer; a class hook or a finalizer would see a subclass or a second
    object, and a C-level base cannot have one made: those modules are asked directly, with torch's listing."""
    model = cls()
    plan = _plan_unclaimed(model, bare_host)
    assert model.answers["plain type"] == "generator"
    assert model.answers["plain"] == _pairs(nn.Module.named_parameters(model))
    assert {r.name for r in plan.rows if r.reason == "model.no_weight_decay()"} == {"blocks.0.table", "blocks.1.table"}
    if cls is OwnListing:
        assert OwnListing.calls >= 4
    assert WatchesSubclasses.seen == []


def test_a_failing_listing_is_the_models_error(bare_host):
    class Fails(ListsItsTables):
        def no_weight_decay(self):
            super().no_weight_decay()
            raise RuntimeError("no list today")

    model = Fails()
    attributes = set(vars(model))
    with pytest.raises(layerdecay.ModelError, match=r"Fails\.no_weight_decay\(\) \(the root\) raised RuntimeError: "
                       r"no list today") as info:
        layerdecay.explain(model, layer_decay=1.0, host=bare_host)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert set(vars(model)) == attributes | {"answers"}  # what the method itself wrote, nothing else


@pytest.mark.parametrize(("listed", "fragment"), [
    ("blocks.0.table", "gave 'blocks.0.table' (str)"),
    ({"blocks.0.table", 3}, "gave 3 (int)"),
    (None, "gave None (NoneType)"),
])
def test_a_listing_that_is_not_names_is_refused(bare_host, listed, fragment):
    class Bad(ListsItsTables):
        def no_weight_decay(self):
            return listed

    with pytest.raises(layerdecay.ModelError, match=r"Bad\.no_weight_decay\(\) \(the root\) ") as info:
        layerdecay.explain(Bad(), layer_decay=1.0, host=bare_host)
    assert fragment in str(info.value) and "a collection of strings: parameter names" in str(info.value)


def test_keywords_that_are_not_strings_are_refused_naming_the_module(bare_host):
    class KeywordsBackbone(ListsItsTables):
        def no_weight_decay_keywords(self):
            return "table"

    model = nn.Module()
    model.backbone = KeywordsBackbone()
    with pytest.raises(layerdecay.ModelError, match=r"KeywordsBackbone\.no_weight_decay_keywords\(\) \(the module "
                       r"at 'backbone'\) gave 'table' \(str\); it must return a collection of strings: parts of"):
        layerdecay.explain(model, layer_decay=1.0, host=bare_host)


def test_a_list_that_fails_on_the_twin_is_asked_of_the_module_itself(bare_host):
    """A method that tells its module by identity (a registry keyed by the module, say) fails on the twin: the
    module itself then answers, and the plan is what it would have been."""
    registry: dict[int, set[str]] = {}

    class Registered(ListsItsTables):
        def no_weight_decay(self):
            return registry[id(self)]

    model = Registered()
    registry[id(model)] = {"blocks.1.table"}
    plan = _plan_unclaimed(model, bare_host)
    assert {r.name for r in plan.rows if r.reason == "model.no_weight_decay()"} == {"blocks.1.table"}


@pytest.mark.parametrize("arch", ["swin_tiny_patch4_window7_224", "beit_base_patch16_224"])
def test_timm_models_that_list_their_own_parameters(arch):
    """timm's Swin and BEiT build ``no_weight_decay()`` from their own parameters: every one it lists (asked
    here directly) gets no weight decay in the plan."""
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    listed = set(model.no_weight_decay()) & {n for n, _ in model.named_parameters()}  # BEiT lists a 'pos_embed'
    assert sum("relative_position_bias_table" in n for n in listed) >= 12
    plan = layerdecay.explain(model, layer_decay=0.75)
    assert {r.name for r in plan.rows if r.weight_decay == 0.0} >= listed
