"""recipe="timm" reproduces timm.optim.param_groups_layer_decay parameter by parameter."""

from __future__ import annotations

import pytest

timm = pytest.importorskip("timm")
from timm.models import group_parameters  # noqa: E402
from timm.optim import param_groups_layer_decay  # noqa: E402

CASES = [
    ("vit_tiny_patch16_224", {}),
    ("vit_base_patch16_224", {}),
    ("deit_base_distilled_patch16_224", {}),
    ("deit3_small_patch16_224", {}),
    ("beit_base_patch16_224", {}),
    ("beit_base_patch16_224", {"use_shared_rel_pos_bias": True}),
    ("eva02_tiny_patch14_224", {}),
    ("vit_small_patch14_reg4_dinov2", {}),
    ("vit_base_patch16_clip_224", {}),
    ("vit_base_patch16_224", {"global_pool": "avg", "fc_norm": True}),
    ("vit_base_patch16_224", {"num_classes": 0}),
    ("vit_base_patch16_224", {"global_pool": "avg", "fc_norm": True, "num_classes": 0}),
    ("vit_base_patch16_224", {"global_pool": "map"}),  # attention-pool head with its own [1, n, D] latent
]


def timm_reference(model, layer_decay=0.75, weight_decay=0.05):
    """(lr_scale, weight_decay) per parameter, by tensor identity, as timm's own function groups them."""
    out = {}
    groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay,
                                      no_weight_decay_list=model.no_weight_decay())
    for group in groups:
        for param in group["params"]:
            out[id(param)] = (group["lr_scale"], group["weight_decay"])
    return out


@pytest.mark.filterwarnings("ignore:.*look like embeddings:layerdecay.errors.LayerDecayWarning")  # attn_pool
@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=lambda c: str(c) if isinstance(c, str) else
                         ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_timm_recipe_equals_timm(plan, meta, name, kwargs):
    model = meta(name, **kwargs)
    result = plan(model, "timm")
    reference = timm_reference(model)
    params = dict(model.named_parameters())
    assert result.owner == "vit"
    assert len(result.rows) == len(reference)
    for row in result.rows:
        scale, wd = reference[id(params[row.name])]
        assert row.lr_mult == pytest.approx(scale, rel=1e-12), row.name
        assert row.weight_decay == wd, row.name
    layer_map = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert result.num_layers == max(layer_map.values()) + 1


def test_timm_layer_count_without_head(plan, meta):
    # No head and token pooling: the final norm joins the last block and nothing is above it, so timm
    # has no separate top layer: 12 blocks + stem = 13 ids, and the last block gets scale 1.0.
    model = meta("vit_base_patch16_224", num_classes=0)
    result = plan(model, "timm")
    assert result.num_layers == 13
    by_name = {r.name: r for r in result.rows}
    assert by_name["blocks.11.mlp.fc2.weight"].lr_mult == 1.0
    assert by_name["norm.weight"].layer_id == by_name["blocks.11.mlp.fc2.weight"].layer_id


def test_timm_recipe_with_frozen_params(plan, meta):
    """timm counts frozen parameters too; freezing the stem shifts nothing."""
    model = meta("vit_tiny_patch16_224")
    for p in model.patch_embed.parameters():
        p.requires_grad_(False)
    model.cls_token.requires_grad_(False)
    reference = timm_reference(model)
    params = dict(model.named_parameters())
    result = plan(model, "timm")
    assert {r.name for r in result.rows} == {n for n, p in params.items() if p.requires_grad}
    for row in result.rows:
        assert row.lr_mult == pytest.approx(reference[id(params[row.name])][0], rel=1e-12), row.name
