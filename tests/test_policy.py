"""The core's "weight decay by meaning" policy, shape by shape and library by library."""

from __future__ import annotations

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
