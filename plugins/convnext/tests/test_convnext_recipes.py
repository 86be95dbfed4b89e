"""The default ("official"), "block" and "stage" recipes against the published rules, written here by hand."""

from __future__ import annotations

import math
import re

import pytest
import timm
import torch

import layerdecay
from plugins.convnext.tests.convnext_helpers import fixture_model, load_fixture, plan_of


def paper_layer_id(name: str) -> int:
    """The ConvNeXt repo's rule as published (12 groups, for depths [3, 3, 27, 3]), on the repo's names."""
    if name.startswith("downsample_layers"):
        stage = int(name.split(".")[1])
        return {0: 0, 1: 2, 2: 3, 3: 12}[stage]
    if name.startswith("stages"):
        stage, block = int(name.split(".")[1]), int(name.split(".")[2])
        return {0: 1, 1: 2, 2: 3 + block // 3, 3: 12}[stage]
    return 13


def test_default_on_the_papers_own_names_is_the_published_rule() -> None:
    """The research repo's convnext_base (rebuilt from its names): ids, scales and weight decay as published."""
    model = fixture_model("original__convnext_base__facebookresearch_ConvNeXt.json")
    plan = plan_of(model)
    assert plan.owner == "convnext"
    assert plan.num_layers == 14
    shapes = {n: s for n, s, *_ in load_fixture("original__convnext_base__facebookresearch_ConvNeXt.json")["params"]}
    for row in plan.rows:
        lid = paper_layer_id(row.name)
        assert row.layer_id == lid, row.name
        assert row.lr_mult == pytest.approx(0.75 ** (13 - lid)), row.name
        # The repo: no weight decay for 1-D tensors and names ending in ".bias".
        no_decay = len(shapes[row.name]) == 1 or row.name.endswith(".bias")
        assert row.weight_decay == (0.0 if no_decay else 0.05), row.name


def _timm_to_paper_name(name: str) -> str:
    name = re.sub(r"^stem\.", "downsample_layers.0.", name)
    name = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", name)
    return re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", name)


def test_default_on_timm_base_is_the_published_rule() -> None:
    with torch.device("meta"):
        model = timm.create_model("convnext_base", pretrained=False)
    plan = plan_of(model)
    assert plan.num_layers == 14
    for row in plan.rows:
        assert row.layer_id == paper_layer_id(_timm_to_paper_name(row.name)), row.name


def generalized_layer_id(name: str, depths: list[int]) -> int:
    """The published rule with stage 2 grouped by three blocks at any depth (timm names)."""
    last = 3 + math.ceil(depths[2] / 3)
    if name.startswith("stem."):
        return 0
    m = re.match(r"stages\.(\d+)\.(?:downsample|blocks\.(\d+))\.", name)
    if m is None:
        return last + 1
    stage, block = int(m[1]), m[2]
    if stage == 2:
        return 3 if block is None else 3 + int(block) // 3
    return {0: 1, 1: 2, 3: last}[stage]


@pytest.mark.parametrize(("name", "depths"), [("convnext_atto", [2, 2, 6, 2]), ("convnext_tiny", [3, 3, 9, 3]),
                                              ("convnext_base", [3, 3, 27, 3])])
def test_default_any_depth(name: str, depths: list[int]) -> None:
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    plan = plan_of(model)  # fails on a warning, e.g. an empty layer id
    assert plan.num_layers == 3 + math.ceil(depths[2] / 3) + 2
    for row in plan.rows:
        assert row.layer_id == generalized_layer_id(row.name, depths), row.name
    assert {r.layer_id for r in plan.rows} == set(range(plan.num_layers))


def test_default_tiny_by_hand() -> None:
    """convnext_tiny: 8 ids, stage 3 at 6 as in the repo's detection config for tiny (num_layers 6)."""
    with torch.device("meta"):
        model = timm.create_model("convnext_tiny", pretrained=False)
    plan = plan_of(model)
    ids = {r.name: r.layer_id for r in plan.rows}
    assert plan.num_layers == 8
    expected = {
        "stem.0.weight": 0, "stem.1.bias": 0,
        "stages.0.blocks.0.gamma": 1, "stages.0.blocks.2.mlp.fc2.weight": 1,
        "stages.1.downsample.1.weight": 2, "stages.1.blocks.2.conv_dw.weight": 2,
        "stages.2.downsample.0.weight": 3, "stages.2.blocks.0.mlp.fc1.weight": 3,
        "stages.2.blocks.2.norm.weight": 3, "stages.2.blocks.3.gamma": 4, "stages.2.blocks.5.gamma": 4,
        "stages.2.blocks.6.conv_dw.bias": 5, "stages.2.blocks.8.mlp.fc2.bias": 5,
        "stages.3.downsample.1.weight": 6, "stages.3.blocks.2.gamma": 6,
        "head.norm.weight": 7, "head.fc.weight": 7, "head.fc.bias": 7,
    }
    assert {n: ids[n] for n in expected} == expected
    scales = {r.name: r.lr_mult for r in plan.rows}
    assert scales["head.fc.weight"] == 1.0
    assert scales["stem.0.weight"] == pytest.approx(0.75**7)


def test_default_base_by_hand() -> None:
    with torch.device("meta"):
        model = timm.create_model("convnext_base", pretrained=False)
    ids = {r.name: r.layer_id for r in plan_of(model).rows}
    expected = {
        "stem.0.weight": 0, "stages.0.blocks.1.gamma": 1, "stages.1.downsample.0.weight": 2,
        "stages.2.downsample.1.weight": 3, "stages.2.blocks.2.gamma": 3, "stages.2.blocks.3.gamma": 4,
        "stages.2.blocks.23.gamma": 10, "stages.2.blocks.24.gamma": 11, "stages.2.blocks.26.mlp.fc2.weight": 11,
        "stages.3.downsample.1.weight": 12, "stages.3.blocks.2.gamma": 12, "head.norm.bias": 13, "head.fc.weight": 13,
    }
    assert {n: ids[n] for n in expected} == expected


def test_block_and_stage_recipes_by_hand() -> None:
    with torch.device("meta"):
        model = timm.create_model("convnext_tiny", pretrained=False)
    block = {r.name: r.layer_id for r in plan_of(model, recipe="block").rows}
    assert plan_of(model, recipe="block").num_layers == 18 + 2
    assert block["stem.0.weight"] == 0
    assert block["stages.0.blocks.0.gamma"] == 1
    assert block["stages.1.downsample.1.weight"] == block["stages.1.blocks.0.gamma"] == 4
    assert block["stages.2.blocks.8.gamma"] == 15
    assert block["stages.3.downsample.0.weight"] == 16
    assert block["stages.3.blocks.2.gamma"] == 18
    assert block["head.norm.weight"] == block["head.fc.weight"] == 19

    stage = {r.name: r.layer_id for r in plan_of(model, recipe="stage").rows}
    assert plan_of(model, recipe="stage").num_layers == 6
    assert stage["stem.1.weight"] == 0
    assert stage["stages.0.blocks.2.gamma"] == 1
    assert stage["stages.2.downsample.1.weight"] == stage["stages.2.blocks.8.gamma"] == 3
    assert stage["stages.3.downsample.1.bias"] == 4
    assert stage["head.fc.bias"] == 5


def test_hnf_norm_pre() -> None:
    """Head-norm-first: norm_pre is the final norm, at the top in every recipe except timm's."""
    with torch.device("meta"):
        model = timm.create_model("convnext_tiny_hnf", pretrained=False)
    for recipe, top in [(None, 7), ("block", 19), ("stage", 5)]:
        ids = {r.name: r.layer_id for r in plan_of(model, recipe=recipe).rows}
        assert ids["norm_pre.weight"] == ids["head.fc.weight"] == top, recipe
    timm_ids = {r.name: r.layer_id for r in plan_of(model, recipe="timm").rows}
    assert timm_ids["norm_pre.weight"] == timm_ids["stages.3.blocks.2.gamma"] == 18


def test_unknown_recipe_lists_recipes() -> None:
    with torch.device("meta"):
        model = timm.create_model("convnext_atto", pretrained=False)
    with pytest.raises(layerdecay.UnknownRecipeError) as info:
        layerdecay.explain(model, recipe="mae")
    message = str(info.value)
    assert "'mae'" in message and "convnext" in message
    for recipe in ("official", "block", "stage", "timm"):
        assert repr(recipe) in message
