"""The default (MAE) and BEiT recipes against the published rules, and the layer count at any depth."""

from __future__ import annotations

import pytest

import layerdecay
from layerdecay.testing import model_from_params

timm = pytest.importorskip("timm")

# MAE and BEiT put BEiT's shared relative-position table (and every recipe timm's attention-pool latent) in
# the top layer on purpose; the core's "looks like an embedding left on top" note may fire for them.
SHARED_REL_POS_NOTE = "ignore:.*look like embeddings:layerdecay.errors.LayerDecayWarning"

MODELS = [
    ("vit_tiny_patch16_224", {}),
    ("vit_base_patch16_224", {}),
    ("deit_base_distilled_patch16_224", {}),
    ("deit3_small_patch16_224", {}),
    ("beit_base_patch16_224", {}),
    ("beit_base_patch16_224", {"use_shared_rel_pos_bias": True}),
    ("eva02_tiny_patch14_224", {}),
    ("vit_small_patch14_reg4_dinov2", {}),
    ("vit_base_patch16_224", {"global_pool": "avg", "fc_norm": True}),
    ("vit_base_patch16_224", {"num_classes": 0}),
    ("vit_base_patch16_224", {"global_pool": "map"}),
    ("vit_base_patch16_clip_224", {}),
]
IDS = [f"{n}-{','.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in MODELS]


@pytest.mark.filterwarnings(SHARED_REL_POS_NOTE)
@pytest.mark.parametrize(("name", "kwargs"), MODELS, ids=IDS)
def test_default_recipe_is_mae(plan, meta, rules, name, kwargs):
    model = meta(name, **kwargs)
    depth = len(model.blocks)
    result = plan(model)
    assert result.owner == "vit"
    assert result.num_layers == depth + 2
    assert plan(model, "mae").rows == result.rows
    for row in result.rows:
        expected = rules.mae(row.name, depth)
        assert row.layer_id == expected, row.name
        assert row.lr_mult == pytest.approx(0.75 ** (depth + 1 - expected), rel=1e-12), row.name


@pytest.mark.filterwarnings(SHARED_REL_POS_NOTE)
@pytest.mark.parametrize(("name", "kwargs"), MODELS, ids=IDS)
def test_beit_recipe_is_beit_rule_and_agrees_with_mae(plan, meta, rules, name, kwargs):
    model = meta(name, **kwargs)
    depth = len(model.blocks)
    result = plan(model, "beit")
    assert result.num_layers == depth + 2
    for row in result.rows:
        expected = rules.beit(row.name, depth)
        if row.name.endswith("_token") or row.name.startswith("norm_pre."):  # stem, as documented
            expected = 0
        assert row.layer_id == expected, row.name
    assert [r.layer_id for r in result.rows] == [r.layer_id for r in plan(model, "mae").rows]


@pytest.mark.filterwarnings(SHARED_REL_POS_NOTE)
def test_shared_rel_pos_bias_placement(plan, meta):
    model = meta("beit_base_patch16_224", use_shared_rel_pos_bias=True)
    name = "rel_pos_bias.relative_position_bias_table"
    by_recipe = {r: {row.name: row for row in plan(model, r).rows}[name] for r in ("mae", "beit", "timm")}
    assert by_recipe["mae"].layer_id == by_recipe["beit"].layer_id == 13  # top: "everything else"
    assert by_recipe["timm"].layer_id == 0  # timm's stem regex lists rel_pos_bias
    assert all(row.weight_decay == 0.0 for row in by_recipe.values())


def test_clip_norm_pre_is_stem(plan, meta):
    """CLIP's pre-block norm belongs to the embedding: id 0 in every recipe (timm's stem regex has it)."""
    model = meta("vit_base_patch16_clip_224")
    for recipe in ("mae", "beit", "timm"):
        rows = {row.name: row for row in plan(model, recipe).rows}
        assert rows["norm_pre.weight"].layer_id == 0
        assert rows["norm_pre.weight"].weight_decay == 0.0


@pytest.mark.parametrize(("name", "depth"), [
    ("vit_tiny_patch16_224", 12),
    ("vit_base_patch16_224", 12),
    ("vit_large_patch16_224", 24),
    ("vit_giant_patch14_224", 40),
])
def test_layer_count_follows_depth(plan, meta, name, depth):
    model = meta(name)
    assert len(model.blocks) == depth
    assert plan(model).num_layers == depth + 2
    assert plan(model, "timm").num_layers == depth + 2  # head present: a separate top layer


def test_synthetic_depth_1000(plan, fixture_params):
    """1000 blocks, rebuilt from MAE's names: the count comes from the model, never from a table of depths."""
    entries = fixture_params("original__vit_base_patch16_global_pool__facebookresearch_mae")
    stem = [e for e in entries if not e[0].startswith(("blocks.", "fc_norm", "head"))]
    block = [e for e in entries if e[0].startswith("blocks.0.")]
    tail = [e for e in entries if e[0].startswith(("fc_norm", "head"))]
    blocks = [[f"blocks.{i}." + n.split(".", 2)[2], s, g] for i in range(1000) for n, s, g in block]
    model = model_from_params(stem + blocks + tail, module_types={r".*norm\w*": "LayerNorm"})
    with pytest.warns(layerdecay.LayerDecayWarning, match="effectively do not train"):  # 0.75 ** 1000
        result, timm_recipe = plan(model), plan(model, "timm")
    assert result.num_layers == 1002
    rows = {row.name: row for row in result.rows}
    assert rows["blocks.999.attn.qkv.weight"].layer_id == 1000
    assert rows["blocks.0.attn.qkv.weight"].layer_id == 1
    assert rows["head.weight"].layer_id == 1001
    assert rows["pos_embed"].layer_id == 0
    assert rows["blocks.999.attn.qkv.weight"].lr_mult == pytest.approx(0.75)
    assert timm_recipe.num_layers == 1002


def test_unknown_recipe(plan, meta):
    with pytest.raises(layerdecay.UnknownRecipeError, match="'mae', 'beit', 'timm'"):
        plan(meta("vit_tiny_patch16_224"), "official")
