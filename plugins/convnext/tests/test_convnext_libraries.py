"""The guarantee: one configuration, one plan, whichever library built it (timm, torchvision, transformers 5
and 4, the research repos), and wherever it is nested."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import timm
import torch
from torch import nn

from plugins.convnext.tests.convnext_helpers import by_canonical, fixture_model, plan_of

# References only: the plugin itself never imports these.
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")

RECIPES = [None, "official", "block", "stage", "timm"]


def _timm(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def _hf(v2: bool = False, labels: int = 1000) -> nn.Module:
    kwargs = {"depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768], "num_labels": labels}
    with torch.device("meta"):
        if v2:
            return transformers.ConvNextV2ForImageClassification(transformers.ConvNextV2Config(**kwargs))
        return transformers.ConvNextForImageClassification(transformers.ConvNextConfig(**kwargs))


def _totals(plan) -> Counter:
    out: Counter = Counter()
    for row in plan.rows:
        out[(round(row.lr_mult, 10), row.weight_decay)] += row.numel
    return out


@pytest.mark.parametrize("recipe", RECIPES)
def test_tiny_same_totals_in_timm_torchvision_transformers(recipe: str | None) -> None:
    with torch.device("meta"):
        tv = torchvision.models.convnext_tiny(weights=None)
    plans = {lib: plan_of(m, recipe) for lib, m in
             [("timm", _timm("convnext_tiny")), ("torchvision", tv), ("transformers", _hf())]}
    assert {p.owner for p in plans.values()} == {"convnext"}
    assert len({p.num_layers for p in plans.values()}) == 1
    reference = _totals(plans["timm"])
    for lib, plan in plans.items():
        assert _totals(plan) == reference, lib


@pytest.mark.parametrize("recipe", RECIPES)
def test_tiny_same_decision_per_module_in_every_library(recipe: str | None) -> None:
    """Per canonical parameter: same id, lr multiplier, weight decay ([C,1,1] layer scale included)."""
    with torch.device("meta"):
        tv = torchvision.models.convnext_tiny(weights=None)
    reference = by_canonical(plan_of(_timm("convnext_tiny"), recipe), "timm")
    cases = [
        ("torchvision", tv),
        ("transformers", _hf()),
        ("transformers", fixture_model("transformers4__ConvNextForImageClassification.json")),
        ("original", fixture_model("original__convnext_tiny__facebookresearch_ConvNeXt.json")),
    ]
    for lib, model in cases:
        got = by_canonical(plan_of(model, recipe), lib)
        assert got.keys() == reference.keys(), lib
        mismatched = {k: (v, reference[k]) for k, v in got.items() if v != reference[k]}
        assert not mismatched, (lib, mismatched)
    # The layer scale really is [C,1,1] in torchvision and still excluded from weight decay.
    row = next(r for r in plan_of(tv, recipe).rows if r.name == "features.1.0.layer_scale")
    assert row.shape == (96, 1, 1) and row.weight_decay == 0.0


@pytest.mark.parametrize("depths", [(1, 1, 1, 1), (1, 3, 2, 1)])
def test_shallow_stages_same_decision_per_module_in_every_library(depths: tuple[int, ...]) -> None:
    """Stages of one block, whose container holds what a block holds: the stages are still the containers
    of the blocks, in every library."""
    dims = [16, 32, 64, 128]
    cnblock = torchvision.models.convnext.CNBlockConfig
    settings = [cnblock(dim, dims[s + 1] if s + 1 < len(dims) else None, n)
                for s, (dim, n) in enumerate(zip(dims, depths, strict=True))]
    with torch.device("meta"):
        models = {
            "timm": timm.models.convnext.ConvNeXt(depths=depths, dims=dims),
            "torchvision": torchvision.models.convnext.ConvNeXt(settings),
            "transformers": transformers.ConvNextForImageClassification(
                transformers.ConvNextConfig(depths=list(depths), hidden_sizes=dims)),
        }
    plans = {lib: plan_of(model) for lib, model in models.items()}
    assert all(plan.num_layers == 3 + math.ceil(depths[2] / 3) + 2 for plan in plans.values())
    reference = by_canonical(plans["timm"], "timm")
    for lib, plan in plans.items():
        got = by_canonical(plan, lib)
        assert got.keys() == reference.keys(), lib
        mismatched = {k: (v, reference[k]) for k, v in got.items() if v != reference[k]}
        assert not mismatched, (lib, mismatched)


@pytest.mark.parametrize("recipe", RECIPES)
def test_v2_same_decision_per_module_in_every_library(recipe: str | None) -> None:
    """ConvNeXt-V2: GRN is [4C] in timm, [1,1,1,4C] in transformers and the repo: same decisions."""
    reference = by_canonical(plan_of(_timm("convnextv2_tiny"), recipe), "timm")
    cases = [
        ("transformers", _hf(v2=True)),
        ("transformers", fixture_model("transformers4__ConvNextV2ForImageClassification.json")),
        ("original", fixture_model("original__convnextv2_tiny__facebookresearch_ConvNeXt-V2.json")),
    ]
    for lib, model in cases:
        got = by_canonical(plan_of(model, recipe), lib)
        assert got.keys() == reference.keys(), lib
        mismatched = {k: (v, reference[k]) for k, v in got.items() if v != reference[k]}
        assert not mismatched, (lib, mismatched)
    assert reference["blk.0.0.grn.weight"][2] == 0.0
    plan = plan_of(_hf(v2=True), recipe)
    grn = next(r for r in plan.rows if r.name.endswith("stages.0.layers.0.grn.weight"))
    assert grn.shape == (1, 1, 1, 384) and grn.weight_decay == 0.0


def test_v2_same_totals() -> None:
    for recipe in RECIPES:
        reference = _totals(plan_of(_timm("convnextv2_tiny"), recipe))
        assert _totals(plan_of(_hf(v2=True), recipe)) == reference, recipe
        original = fixture_model("original__convnextv2_tiny__facebookresearch_ConvNeXt-V2.json")
        assert _totals(plan_of(original, recipe)) == reference, recipe


def test_transformers4_base_model_without_head() -> None:
    """ConvNextModel (no classifier): the final layernorm alone is the top layer, as timm's head.norm."""
    plan = plan_of(fixture_model("transformers4__ConvNextModel.json"))
    ids = {r.name: r.layer_id for r in plan.rows}
    assert plan.num_layers == 8
    assert ids["embeddings.patch_embeddings.weight"] == 0
    assert ids["encoder.stages.2.layers.8.pwconv2.weight"] == 5
    assert ids["encoder.stages.3.downsampling_layer.1.weight"] == 6
    assert ids["layernorm.weight"] == 7


class Detector(nn.Module):
    """A detector-like wrapper: backbone, neck, head."""

    def __init__(self, backbone: nn.Module, width: int = 768) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Sequential(nn.Conv2d(width, 256, 1), nn.GroupNorm(32, 256), nn.Conv2d(256, 256, 3))
        self.head = nn.Linear(256, 80)


@pytest.mark.parametrize("recipe", RECIPES)
def test_nested_backbone_keeps_its_ids(recipe: str | None) -> None:
    bare = _timm("convnext_tiny", num_classes=0)
    bare_plan = plan_of(bare, recipe)
    with torch.device("meta"):
        wrapped = Detector(bare)
    plan = plan_of(wrapped, recipe)
    assert plan.owner == "convnext" and plan.num_layers == bare_plan.num_layers
    expected = {"backbone." + r.name: r.layer_id for r in bare_plan.rows}
    for row in plan.rows:
        if row.name.startswith("backbone."):
            assert row.layer_id == expected[row.name], row.name
        else:
            assert row.layer_id == plan.num_layers - 1, row.name


def test_nested_features_only_and_torchvision_features() -> None:
    """timm features_only flattens the stem into stem_0/stem_1; torchvision's bare features has no top."""
    model = _timm("convnext_tiny", features_only=True)
    with torch.device("meta"):
        wrapped = Detector(model)
    ids = {r.name: r.layer_id for r in plan_of(wrapped).rows}
    assert ids["backbone.stem_0.weight"] == ids["backbone.stem_1.weight"] == 0
    assert ids["backbone.stages_3.downsample.1.weight"] == 6
    assert ids["neck.0.weight"] == ids["head.weight"] == 7

    with torch.device("meta"):
        features = torchvision.models.convnext_tiny(weights=None).features
    plan = plan_of(features)  # no warning: no empty top layer
    assert plan.num_layers == 7
    assert max(r.layer_id for r in plan.rows) == 6


def test_segmenter_with_transformers_backbone() -> None:
    cfg = transformers.UperNetConfig(backbone_config=transformers.ConvNextConfig(
        depths=[3, 3, 27, 3], hidden_sizes=[128, 256, 512, 1024],
        out_features=["stage1", "stage2", "stage3", "stage4"]))
    with torch.device("meta"):
        model = transformers.UperNetForSemanticSegmentation(cfg)
    plan = plan_of(model)
    ids = {r.name: r.layer_id for r in plan.rows}
    assert plan.owner == "convnext" and plan.num_layers == 14
    assert ids["backbone.embeddings.layernorm.weight"] == 0
    assert ids["backbone.encoder.stages.2.layers.26.pwconv1.weight"] == 11
    assert ids["backbone.encoder.stages.3.layers.0.dwconv.weight"] == 12
    outside = [r for r in plan.rows if not r.name.startswith(("backbone.embeddings", "backbone.encoder"))]
    assert outside and all(r.layer_id == 13 for r in outside)


@pytest.mark.parametrize("recipe", RECIPES)
def test_frozen_stem_keeps_scales(recipe: str | None) -> None:
    full = plan_of(_timm("convnext_atto"), recipe)
    model = _timm("convnext_atto")
    for p in model.stem.parameters():
        p.requires_grad_(False)
    frozen = plan_of(model, recipe)
    assert frozen.num_layers == full.num_layers
    assert frozen.scales == full.scales
    before = {r.name: (r.layer_id, r.lr_mult, r.weight_decay) for r in full.rows}
    assert frozen.rows and all(before[r.name] == (r.layer_id, r.lr_mult, r.weight_decay) for r in frozen.rows)
    assert not any(r.name.startswith("stem.") for r in frozen.rows)


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_torchvision_sizes_match_timm(size: str) -> None:
    with torch.device("meta"):
        tv = getattr(torchvision.models, f"convnext_{size}")(weights=None)
    for recipe in RECIPES:
        reference = by_canonical(plan_of(_timm(f"convnext_{size}"), recipe), "timm")
        assert by_canonical(plan_of(tv, recipe), "torchvision") == reference, recipe
