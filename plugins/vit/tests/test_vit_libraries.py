"""The guarantee: for one recipe, every library's spelling of a ViT gets the same lr and weight decay.

Roles are read from each library's names with the tables of the libraries' own layouts (timm, torchvision,
transformers 4 and 5, MAE's repo), written here independently of the plugin; the expected values come from
timm's own ``param_groups_layer_decay`` (recipe "timm") or from the published MAE rule (recipes "mae", "beit").
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

timm = pytest.importorskip("timm")
from timm.optim import param_groups_layer_decay  # noqa: E402

RECIPES = ("mae", "beit", "timm")
SHARED_REL_POS_NOTE = "ignore:.*look like embeddings:layerdecay.errors.LayerDecayWarning"

# (regex over the full name, role); the block index is the regex's group 1.
TIMM_ROLES = [
    (r"(cls_token|dist_token|reg_token|pos_embed|patch_embed\..*|norm_pre\..*)", "stem"),
    (r"rel_pos_bias\..*", "shared_rel_pos"),
    (r"blocks\.(\d+)\..*", "block"),
    (r"norm\..*", "final_norm"),
    (r".*", "head"),
]
HF4_ROLES = [
    (r"(?:\w+\.)?embeddings\..*", "stem"),
    (r"(?:\w+\.)?encoder\.relative_position_bias\..*", "shared_rel_pos"),
    (r"(?:\w+\.)?encoder\.layer\.(\d+)\..*", "block"),
    (r"(?:\w+\.)?layernorm\..*", "final_norm"),
    (r".*", "head"),
]
HF5_ROLES = [
    (r"(?:\w+\.)?embeddings\..*", "stem"),
    (r"(?:\w+\.)?shared_position_bias\..*", "shared_rel_pos"),
    (r"(?:\w+\.)?layers\.(\d+)\..*", "block"),
    (r"(?:\w+\.)?layernorm\..*", "final_norm"),
    (r".*", "head"),
]
TORCHVISION_ROLES = [
    (r"(class_token|conv_proj\..*|encoder\.pos_embedding)", "stem"),
    (r"encoder\.layers\.encoder_layer_(\d+)\..*", "block"),
    (r"encoder\.ln\..*", "final_norm"),
    (r".*", "head"),
]


def role_of(name, table):
    for pattern, role in table:
        m = re.fullmatch(pattern, name)
        if m:
            return (role, int(m.group(1))) if role == "block" else (role, -1)
    raise AssertionError(name)


def published_no_decay(name, shape):
    """MAE/BEiT/timm: 1-D, plus the model's no_weight_decay() list (tokens, position embeddings, rel-pos tables)."""
    local = name.rsplit(".", 1)[-1]
    return len(shape) <= 1 or local.endswith(("token", "pos_embed", "pos_embedding", "position_embeddings",
                                              "relative_position_bias_table"))


def mae_id(role, depth):
    kind, index = role
    return {"stem": 0, "block": index + 1}.get(kind, depth + 1)


def timm_scale_by_role(model):
    """Role -> lr scale, read from timm's own param groups of the counterpart timm model."""
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75,
                                      no_weight_decay_list=model.no_weight_decay())
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    by_role = {}
    for name, param in model.named_parameters():
        by_role.setdefault(role_of(name, TIMM_ROLES), set()).add(scale_of[id(param)])
    assert all(len(s) == 1 for s in by_role.values())
    return {role: s.pop() for role, s in by_role.items()}


def check_against_published(plan, model, table, counterpart, depth):
    """Every row of every recipe: id/scale from the published rule, weight decay by the published lists."""
    for recipe in RECIPES:
        result = plan(model, recipe)
        assert result.owner == "vit"
        reference = timm_scale_by_role(counterpart) if recipe == "timm" else None
        for row in result.rows:
            role = role_of(row.name, table)
            if reference is None:
                assert row.layer_id == mae_id(role, depth), (recipe, row.name)
                assert result.num_layers == depth + 2
            else:
                assert row.lr_mult == pytest.approx(reference[role], rel=1e-12), (recipe, row.name)
            assert (row.weight_decay == 0.0) == published_no_decay(row.name, row.shape), (recipe, row.name)


# -- cross-library: timm vs torchvision vs transformers 5, same architecture --------------------------------


@pytest.fixture(scope="module")
def three_vit_b16():
    torchvision = pytest.importorskip("torchvision")
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        return {
            "timm": timm.create_model("vit_base_patch16_224", pretrained=False),
            "torchvision": torchvision.models.vit_b_16(weights=None),
            "transformers": transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000)),
        }


@pytest.mark.parametrize("recipe", RECIPES)
def test_same_elements_per_lr_and_weight_decay(plan, three_vit_b16, recipe):
    totals = {}
    for library, model in three_vit_b16.items():
        result = plan(model, recipe)
        assert result.owner == "vit", library
        assert result.num_layers == 14, library
        counts = Counter()
        for row in result.rows:
            counts[(round(row.lr_mult, 12), row.weight_decay)] += row.numel
        totals[library] = counts
    assert totals["torchvision"] == totals["timm"]
    assert totals["transformers"] == totals["timm"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_same_module_same_values(plan, three_vit_b16, recipe):
    """torchvision's encoder_layer_11 and HF's split q/k/v get what timm's blocks.11 and fused qkv get."""
    tables = {"timm": TIMM_ROLES, "torchvision": TORCHVISION_ROLES, "transformers": HF5_ROLES}
    per_role = {}
    for library, model in three_vit_b16.items():
        values = {}
        for row in plan(model, recipe).rows:
            values.setdefault(role_of(row.name, tables[library]), set()).add(row.lr_mult)
        per_role[library] = values
    assert per_role["timm"][("block", 11)] == per_role["torchvision"][("block", 11)] == \
        per_role["transformers"][("block", 11)]
    assert per_role["torchvision"] == per_role["timm"]
    assert per_role["transformers"] == per_role["timm"]
    rows = {r.name: r for r in plan(three_vit_b16["transformers"], recipe).rows}
    timm_rows = {r.name: r for r in plan(three_vit_b16["timm"], recipe).rows}
    for part in ("q_proj", "k_proj", "v_proj"):
        assert rows[f"vit.layers.3.attention.{part}.weight"].lr_mult == timm_rows["blocks.3.attn.qkv.weight"].lr_mult
        assert rows[f"vit.layers.3.attention.{part}.weight"].weight_decay == 0.05
        assert rows[f"vit.layers.3.attention.{part}.bias"].weight_decay == 0.0


# -- transformers 4, torchvision and MAE fixtures rebuilt from their names ----------------------------------

FIXTURES = [
    # (fixture, role table, timm counterpart, its kwargs)
    ("transformers4__ViTModel", HF4_ROLES, "vit_base_patch16_224", {}),  # pooler -> head role
    ("transformers4__ViTForImageClassification", HF4_ROLES, "vit_base_patch16_224", {}),
    ("transformers4__ViTModel__no_pooler", HF4_ROLES, "vit_base_patch16_224", {"depth": 2, "num_classes": 0}),
    ("transformers4__DeiTForImageClassificationWithTeacher", HF4_ROLES, "deit_base_distilled_patch16_224",
     {"depth": 4}),
    ("transformers4__BeitForImageClassification", HF4_ROLES, "beit_base_patch16_224", {"depth": 4}),
    ("transformers4__BeitForImageClassification__shared_rel_pos", HF4_ROLES, "beit_base_patch16_224",
     {"depth": 4, "use_shared_rel_pos_bias": True}),
    ("original__vit_base_patch16_global_pool__facebookresearch_mae", TIMM_ROLES, "vit_base_patch16_224",
     {"global_pool": "avg", "fc_norm": True}),
    ("torchvision__vit_b_16", TORCHVISION_ROLES, "vit_base_patch16_224", {}),
]


@pytest.mark.filterwarnings(SHARED_REL_POS_NOTE)
@pytest.mark.parametrize(("stem", "table", "counterpart", "kwargs"), FIXTURES, ids=[f[0] for f in FIXTURES])
def test_fixture_matches_published_rules(plan, fixture_model, meta, stem, table, counterpart, kwargs):
    model = fixture_model(stem)
    depth = 1 + max(role_of(n, table)[1] for n, _ in model.named_parameters())
    check_against_published(plan, model, table, meta(counterpart, **kwargs), depth)


HF5_MODELS = [
    ("ViTModel", "ViTConfig", {"num_hidden_layers": 3}, "vit_base_patch16_224", {"depth": 3}),
    ("ViTForImageClassification", "ViTConfig", {"num_hidden_layers": 3, "num_labels": 10},
     "vit_base_patch16_224", {"depth": 3}),
    ("DeiTForImageClassificationWithTeacher", "DeiTConfig", {"num_hidden_layers": 3},
     "deit_base_distilled_patch16_224", {"depth": 3}),
    ("BeitForImageClassification", "BeitConfig", {"num_hidden_layers": 3, "use_relative_position_bias": True},
     "beit_base_patch16_224", {"depth": 3}),
    ("BeitForImageClassification", "BeitConfig",
     {"num_hidden_layers": 3, "use_shared_relative_position_bias": True},
     "beit_base_patch16_224", {"depth": 3, "use_shared_rel_pos_bias": True}),
]


@pytest.mark.filterwarnings(SHARED_REL_POS_NOTE)
@pytest.mark.parametrize(("cls", "config", "options", "counterpart", "kwargs"), HF5_MODELS,
                         ids=[f"{m[0]}-{i}" for i, m in enumerate(HF5_MODELS)])
def test_transformers5_matches_published_rules(plan, meta, cls, config, options, counterpart, kwargs):
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = getattr(transformers, cls)(getattr(transformers, config)(**options))
    check_against_published(plan, model, HF5_ROLES, meta(counterpart, **kwargs), options["num_hidden_layers"])
