"""recipe="timm" reproduces timm's own ``param_groups_layer_decay``, parameter by parameter."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.optim import param_groups_layer_decay

from plugins.convnext.tests.convnext_helpers import plan_of

CASES = [
    ("convnext_atto", {}),
    ("convnext_tiny", {}),
    ("convnext_base", {}),
    ("convnextv2_tiny", {}),
    ("convnext_tiny_hnf", {}),
    ("convnext_tiny", {"num_classes": 0}),  # head.norm stays: still a separate top layer
    ("convnext_tiny_hnf", {"num_classes": 0}),  # no head at all: norm_pre merges into the last block
]


def _timm_reference(model: torch.nn.Module) -> tuple[dict[int, tuple[float, float]], int]:
    nwd = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75, no_weight_decay_list=nwd)
    expected = {}
    for group in groups:
        for param in group["params"]:
            expected[id(param)] = (group["lr_scale"], group["weight_decay"])
    num_layers = max(timm.models.group_parameters(model, model.group_matcher(), reverse=True).values()) + 1
    return expected, num_layers


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}-{k}" if k else n for n, k in CASES])
def test_timm_recipe_matches_timm(name: str, kwargs: dict) -> None:
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    expected, timm_layers = _timm_reference(model)
    plan = plan_of(model, recipe="timm")
    assert plan.owner == "convnext"
    assert plan.num_layers == timm_layers
    params = dict(model.named_parameters())
    assert len(plan.rows) == len(expected) == len(params)
    for row in plan.rows:
        scale, decay = expected[id(params[row.name])]
        assert row.lr_mult == pytest.approx(scale, rel=1e-12), row.name
        assert row.weight_decay == decay, row.name


def test_timm_recipe_custom_depths_matches_timm() -> None:
    """Depths no registered model has, built from the class directly: still timm's plan."""
    from timm.models.convnext import ConvNeXt

    for depths in [(1, 1, 1, 1), (2, 2, 4, 2), (1, 2, 7, 1)]:
        dims = tuple(16 * 2**i for i in range(len(depths)))
        with torch.device("meta"):
            model = ConvNeXt(depths=depths, dims=dims, num_classes=10)
        expected, timm_layers = _timm_reference(model)
        plan = plan_of(model, recipe="timm")
        assert plan.num_layers == timm_layers == sum(depths) + 2
        params = dict(model.named_parameters())
        for row in plan.rows:
            assert row.lr_mult == pytest.approx(expected[id(params[row.name])][0], rel=1e-12), (depths, row.name)


@pytest.mark.parametrize("name", timm.list_models("convnext*"))
def test_every_timm_convnext_matches_timm(name: str) -> None:
    """Every ConvNeXt timm registers (overlap stems, conv MLPs, RMS norms, V2 GRN, head-norm-first)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    expected, timm_layers = _timm_reference(model)
    plan = plan_of(model, recipe="timm")
    assert plan.owner == "convnext" and plan.num_layers == timm_layers
    params = dict(model.named_parameters())
    for row in plan.rows:
        scale, decay = expected[id(params[row.name])]
        assert (row.lr_mult, row.weight_decay) == (pytest.approx(scale, rel=1e-12), decay), row.name
