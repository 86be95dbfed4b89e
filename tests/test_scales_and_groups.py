"""Layer scales, group contents and the build API, against hand computation."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import layerdecay
from tests.models import TinyNet

DECAY = 0.65


def expected_layer(name: str, depth: int = 4) -> int:
    """The TinyRule assignment, written out independently."""
    if name.split(".")[0] in {"embed", "pos_embed", "cls_token"}:
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def test_scales_match_hand_computation(tiny, tiny_host):
    plan = layerdecay.explain(tiny, layer_decay=DECAY, host=tiny_host)
    assert plan.num_layers == 6
    assert plan.owner == "tiny-rule"
    for row in plan.rows:
        lid = expected_layer(row.name)
        assert row.layer_id == lid
        assert row.lr_mult == pytest.approx(DECAY ** (5 - lid), rel=1e-12)
    assert plan.scales[0] == pytest.approx(DECAY**5)
    assert plan.scales[-1] == 1.0


def test_param_groups_effective_lr_and_keys(tiny, tiny_host):
    groups = layerdecay.param_groups(tiny, lr=1e-3, layer_decay=DECAY, weight_decay=0.05, host=tiny_host)
    for g in groups:
        assert "lr_scale" not in g
        assert set(g) >= {"params", "lr", "weight_decay", "layer_id", "lr_mult", "group_name"}
        assert g["lr"] == pytest.approx(1e-3 * DECAY ** (5 - g["layer_id"]))
        for name, p in g["params"]:
            assert expected_layer(name) == g["layer_id"]
            assert isinstance(p, torch.nn.Parameter)
    names = [n for g in groups for n, _ in g["params"]]
    assert sorted(names) == sorted(n for n, _ in tiny.named_parameters())


def test_lr_scale_mode_keeps_base_lr(tiny, tiny_host):
    groups = layerdecay.param_groups(tiny, lr=0.1, layer_decay=0.5, scale_mode="lr_scale", host=tiny_host)
    for g in groups:
        assert g["lr"] == 0.1
        assert g["lr_scale"] == pytest.approx(0.5 ** (5 - g["layer_id"]))


def test_weight_decay_split(tiny, tiny_host):
    plan = layerdecay.explain(tiny, weight_decay=0.1, host=tiny_host)
    decayed = {r.name for r in plan.rows if r.weight_decay}
    assert decayed == {"embed.weight", "head.weight"} | {f"blocks.{i}.fc.weight" for i in range(4)}
    assert all(r.weight_decay == 0.1 for r in plan.rows if r.name in decayed)


def test_lr_mult_pattern_multiplies_layer_scale(tiny, tiny_host):
    plan = layerdecay.explain(tiny, layer_decay=DECAY, lr_mult={"head": 10.0}, host=tiny_host)
    assert plan.row("head.weight").lr_mult == pytest.approx(10.0)
    assert plan.row("norm.weight").lr_mult == pytest.approx(1.0)
    head_groups = [g for g in plan.groups if g.lr_mult == pytest.approx(10.0)]
    assert head_groups and all(g.name.endswith("_x10") for g in head_groups)


def test_no_weight_decay_patterns(tiny, tiny_host):
    plan = layerdecay.explain(tiny, no_weight_decay=["blocks.*.fc.weight", "re:embed\\..*"], host=tiny_host)
    assert plan.row("blocks.2.fc.weight").weight_decay == 0.0
    assert plan.row("embed.weight").weight_decay == 0.0
    assert plan.row("blocks.2.fc.weight").reason == "no_weight_decay pattern 'blocks.*.fc.weight'"
    assert plan.row("head.weight").weight_decay == 0.05


def test_min_scale_clamps_and_warns(tiny, tiny_host):
    with pytest.warns(layerdecay.LayerDecayWarning, match="min_scale"):
        plan = layerdecay.explain(tiny, layer_decay=0.1, min_scale=0.01, host=tiny_host)
    assert plan.scales[0] == 0.01 and plan.scales[1] == 0.01
    assert plan.scales[3] == pytest.approx(0.01) and plan.scales[4] == pytest.approx(0.1)


def test_groups_merge_when_hyperparameters_equal(tiny, tiny_host):
    plan = layerdecay.explain(tiny, layer_decay=1.0, host=tiny_host)
    assert len(plan.groups) == 2  # one decayed, one not: every layer has scale 1.0
    assert plan.groups[0].layer_ids == tuple(range(6))
    assert plan.groups[0].name == "layers_0-5_decay"


def test_group_order_is_deterministic_and_by_layer(tiny, tiny_host):
    first = [g.name for g in layerdecay.explain(tiny, host=tiny_host).groups]
    second = [g.name for g in layerdecay.explain(tiny, host=tiny_host).groups]
    assert first == second
    layer_order = [int(n.split("_")[1]) for n in first]
    assert layer_order == sorted(layer_order)


def test_groups_of_one_layer_that_differ_in_weight_decay_are_ordered_by_it(tiny, tiny_host):
    # Three decayed groups in layer 0 with the same lr: their order is decided by the weight decay alone,
    # not by the order in which the planner happened to meet their parameters' decisions.
    wd_mults = {"pos_embed": 3.0, "cls_token": 0.5}

    class WdMults:
        @layerdecay.hookimpl
        def layerdecay_param_policy(self):
            return lambda name, p, m: (layerdecay.Decision(weight_decay=True, wd_mult=wd_mults[name])
                                       if name in wd_mults else None)

    plan = layerdecay.explain(tiny, weight_decay=0.05, plugins=[WdMults()], host=tiny_host)
    layer_0 = [g for g in plan.groups if g.layer_ids == (0,)]
    assert [g.weight_decay for g in layer_0] == pytest.approx([0.025, 0.05, 0.15, 0.0])
    members = [{plan.rows[i].name for i in g.rows} for g in layer_0]
    assert members == [{"cls_token"}, {"embed.weight"}, {"pos_embed"}, {"embed.bias"}]


def test_build_optimizer_lambda_lr_keeps_ratios(tiny, tiny_host):
    opt = layerdecay.build_optimizer(tiny, "adamw", lr=1e-3, layer_decay=DECAY, host=tiny_host)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    for step in range(5):
        tiny(torch.randn(2, 3, 5)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        factor = 1.0 / (step + 2)
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(1e-3 * factor * DECAY ** (5 - g["layer_id"]))


def test_param_names_reach_optimizer_state_dict(tiny, tiny_host):
    opt = layerdecay.build_optimizer(tiny, "sgd", lr=0.1, host=tiny_host)
    state = opt.state_dict()
    names = [n for g in state["param_groups"] for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in tiny.named_parameters())
    assert {"layer_id", "lr_mult", "group_name"} <= set(state["param_groups"][0])


@pytest.mark.parametrize("name", ["adamw", "AdamW", "sgd", "rmsprop", "nadam", "radam", "adagrad"])
def test_torch_optimizers_by_name(tiny, tiny_host, name):
    opt = layerdecay.build_optimizer(tiny, name, lr=0.01, host=tiny_host)
    assert type(opt).__module__.startswith("torch.optim")
    assert type(opt).__name__.lower() == name.lower()


@pytest.mark.parametrize("name", ["lamb", "lion", "adan", "adabelief", "lookahead_adamw"])
def test_timm_optimizers_by_name(tiny, tiny_host, name):
    opt = layerdecay.build_optimizer(tiny, name, lr=0.01, host=tiny_host)
    tiny(torch.randn(2, 3, 5)).sum().backward()
    before = tiny.head.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, tiny.head.weight.detach())
    lrs = {g["group_name"]: g["lr"] for g in opt.param_groups}
    assert lrs["layer_0_decay"] == pytest.approx(0.01 * 0.75**5)


def test_optimizer_class_and_kwargs(tiny, tiny_host):
    opt = layerdecay.build_optimizer(tiny, torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True, host=tiny_host)
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 and g["nesterov"] for g in opt.param_groups)


def test_unknown_optimizer_lists_close_matches(tiny, tiny_host):
    with pytest.raises(layerdecay.UnknownOptimizerError, match="adamw"):
        layerdecay.build_optimizer(tiny, "adamww", lr=0.1, host=tiny_host)


def test_lr_scale_mode_with_build_optimizer(tiny, tiny_host):
    opt = layerdecay.build_optimizer(tiny, "adamw", lr=0.2, layer_decay=0.5, scale_mode="lr_scale", host=tiny_host)
    assert all(g["lr"] == 0.2 and math.isclose(g["lr_scale"], 0.5 ** (5 - g["layer_id"])) for g in opt.param_groups)


@pytest.mark.parametrize("depth", [2, 64])
@pytest.mark.parametrize("name", ["adamw", "sgd", "lamb", "adagrad"])
def test_groups_build_like_torch_does(tiny_host, name, depth):
    """The optimizer skips torch's disjointness check between groups (Adagrad, which fills its state in
    its constructor, is built the ordinary way); it must still equal an optimizer built the ordinary way,
    group by group and step by step."""
    torch.manual_seed(0)
    model = TinyNet(depth=depth)
    twin = copy.deepcopy(model)
    # 0.9 keeps the bottom layers of the deep net above the negligible-scale warning (0.75 ** 65 is below).
    fast = layerdecay.build_optimizer(model, name, lr=0.01, layer_decay=0.9, host=tiny_host)
    assert len(fast.param_groups) > depth
    groups = layerdecay.param_groups(twin, lr=0.01, layer_decay=0.9, host=tiny_host)
    if name == "lamb":
        from timm.optim import Lamb as cls
    else:
        cls = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}[name]
    reference = cls(groups, lr=0.01, weight_decay=0.05)
    assert type(fast) is type(reference)
    strip = lambda g: {k: v for k, v in g.items() if k != "params"}  # noqa: E731
    assert [strip(g) for g in fast.param_groups] == [strip(g) for g in reference.param_groups]
    for step in range(2):
        x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(step))
        for m, opt in ((model, fast), (twin, reference)):
            m(x).sum().backward()
            opt.step()
            opt.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True))
    assert fast.state_dict()["param_groups"] == reference.state_dict()["param_groups"]
    assert fast.state_dict()["state"].keys() == reference.state_dict()["state"].keys()


def test_many_groups_with_an_overridden_add_param_group_build_the_ordinary_way(tiny_host):
    class CountingSGD(torch.optim.SGD):
        added = 0

        def add_param_group(self, param_group):
            type(self).added += 1
            super().add_param_group(param_group)

    model = TinyNet(depth=8)
    opt = layerdecay.build_optimizer(model, CountingSGD, lr=0.1, host=tiny_host)
    groups = layerdecay.param_groups(model, lr=0.1, host=tiny_host)
    assert [g["group_name"] for g in opt.param_groups] == [g["group_name"] for g in groups]
    assert [g["param_names"] for g in opt.param_groups] == [[n for n, _ in g["params"]] for g in groups]
    assert CountingSGD.added == 1 + len(groups)  # the probe's one group, then every group through the override


def test_a_non_leaf_tensor_is_named_in_the_error(tiny, tiny_host):
    """torch refuses to optimize a non-leaf tensor; appended groups are checked alike, naming the parameter."""
    source = torch.ones(3, requires_grad=True)
    tiny.head._parameters["bias"] = source * 2  # a computed tensor where a parameter should be
    with pytest.raises(layerdecay.ConfigError, match=r"parameter 'head.bias' is a non-leaf tensor"):
        layerdecay.build_optimizer(tiny, "adamw", lr=0.1, host=tiny_host)
