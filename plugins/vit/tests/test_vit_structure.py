"""Recognition by structure: nested backbones, wrappers, frozen parameters, and models that are not ViTs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import layerdecay
import layerdecay_vit
from layerdecay import ModelView

timm = pytest.importorskip("timm")


class Detector(nn.Module):
    """A detector-like wrapper: a ViT backbone, then a neck and a head that are not part of it."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.neck = nn.Linear(192, 64)  # registered first: order alone must not make it the stem
        self.backbone = backbone
        self.head = nn.Linear(64, 10)


def test_nested_backbone_keeps_the_bare_ids(plan, meta, rules):
    bare = meta("vit_tiny_patch16_224", num_classes=0)
    with torch.device("meta"):
        model = Detector(meta("vit_tiny_patch16_224", num_classes=0))
    for recipe in ("mae", "timm"):
        nested = {r.name: r for r in plan(model, recipe).rows}
        for row in plan(bare, recipe).rows:
            if recipe == "mae":
                assert row.layer_id == rules.mae(row.name, 12), row.name
            assert nested["backbone." + row.name].layer_id == row.layer_id, (recipe, row.name)
        top = 13
        for name in ("neck.weight", "neck.bias", "head.weight"):
            assert nested[name].layer_id == top, (recipe, name)
            assert nested[name].lr_mult == 1.0
    # Under "timm" the bare model has no top layer (no head); nested, the neck and head make one.
    assert plan(bare, "timm").num_layers == 13
    assert plan(model, "timm").num_layers == 14


def test_wrapped_hf_base_model(plan, fixture_model):
    """A user wrapper around transformers' ViTModel (base-model names without a prefix), plus a head."""
    model = nn.Module()
    model.encoder_model = fixture_model("transformers4__ViTModel")
    model.classifier = nn.Linear(768, 5, device="meta")
    rows = {r.name: r for r in plan(model).rows}
    assert rows["encoder_model.embeddings.cls_token"].layer_id == 0
    assert rows["encoder_model.encoder.layer.11.output.dense.weight"].layer_id == 12
    assert rows["encoder_model.pooler.dense.weight"].layer_id == 13
    assert rows["classifier.weight"].layer_id == 13


def test_ddp_like_wrapper_is_seen_through(plan, meta):
    model = meta("vit_tiny_patch16_224")
    wrapper = nn.Module()
    wrapper.module = model
    assert [(r.name, r.layer_id) for r in plan(wrapper).rows] == [(r.name, r.layer_id) for r in plan(model).rows]


@pytest.mark.parametrize("recipe", ["mae", "beit", "timm"])
def test_frozen_patch_embed_keeps_scales(plan, meta, recipe):
    trainable = {r.name: r.lr_mult for r in plan(meta("vit_tiny_patch16_224"), recipe).rows}
    model = meta("vit_tiny_patch16_224")
    for p in model.patch_embed.parameters():
        p.requires_grad_(False)
    result = plan(model, recipe)
    assert result.num_layers == 14
    assert not any(r.name.startswith("patch_embed.") for r in result.rows)
    for row in result.rows:
        assert row.lr_mult == trainable[row.name], row.name


def test_frozen_first_blocks_count(plan, meta):
    """Freezing whole blocks removes their rows but not their layer ids."""
    model = meta("vit_tiny_patch16_224")
    for block in model.blocks[:6]:
        block.requires_grad_(False)
    result = plan(model)
    assert result.num_layers == 14
    rows = {r.name: r for r in result.rows}
    assert rows["blocks.6.attn.qkv.weight"].layer_id == 7
    assert rows["blocks.6.attn.qkv.weight"].lr_mult == pytest.approx(0.75**6)


def test_installed_entry_point_claims_vit(meta):
    """Through the default plugin discovery, the vit plugin (not the generic fallback) owns a ViT."""
    assert layerdecay.explain(meta("vit_tiny_patch16_224")).owner == "vit"


# -- not ViTs --------------------------------------------------------------------------------------------


def _not_claimed(model: nn.Module) -> None:
    view = ModelView(model)
    for recipe in (None, "timm", "nonsense"):  # an unknown recipe is not an error for a model we do not own
        assert layerdecay_vit.layerdecay_num_layers(view, recipe) is None
        assert layerdecay_vit.layerdecay_layer_id(view, recipe, 5) is None


@pytest.mark.parametrize("name", ["convnext_tiny", "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256"])
def test_timm_non_vit_not_claimed(meta, name):
    _not_claimed(meta(name))


@pytest.mark.parametrize("name", ["swin_t", "convnext_tiny"])
def test_torchvision_non_vit_not_claimed(name):
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        _not_claimed(getattr(torchvision.models, name)(weights=None))


@pytest.mark.parametrize(("cls", "config", "options"), [
    ("BertModel", "BertConfig", {"num_hidden_layers": 2}),
    ("BertForMaskedLM", "BertConfig", {"num_hidden_layers": 2}),
    ("SwinForImageClassification", "SwinConfig", {}),
    ("ConvNextForImageClassification", "ConvNextConfig", {}),
])
def test_transformers_non_vit_not_claimed(cls, config, options):
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        _not_claimed(getattr(transformers, cls)(getattr(transformers, config)(**options)))


@pytest.mark.parametrize("stem", ["transformers4__BertModel", "transformers4__SwinForImageClassification",
                                  "original__swin_tiny__microsoft_Swin-Transformer"])
def test_fixture_non_vit_not_claimed(fixture_model, stem):
    _not_claimed(fixture_model(stem))


def test_swin_with_absolute_position_embedding_not_claimed(fixture_params):
    """Swin with ape=True has patch_embed, a [1, N, C] position table and stacks of blocks: still not a ViT."""
    from layerdecay.testing import model_from_params

    entries = fixture_params("original__swin_tiny__microsoft_Swin-Transformer")
    assert not any(n == "absolute_pos_embed" for n, *_ in entries)
    _not_claimed(model_from_params([["absolute_pos_embed", [1, 3136, 96], True], *entries]))


def test_two_equal_vits_are_not_guessed(meta):
    """Two equal ViTs (an ensemble, teacher and student): picking one would give the other the head's lr."""
    _not_claimed(nn.ModuleList([meta("vit_tiny_patch16_224"), meta("vit_tiny_patch16_224")]))


def test_vit_inside_a_list_of_one(plan, meta):
    """A ModuleList holding one whole ViT is a container of a model, not a stack of blocks."""
    model = nn.ModuleList([meta("vit_tiny_patch16_224")])
    rows = {r.name: r for r in plan(model).rows}
    assert rows["0.blocks.3.attn.qkv.weight"].layer_id == 4
    assert rows["0.cls_token"].layer_id == 0
    assert rows["0.head.weight"].layer_id == 13


def test_unknown_recipe_names_the_recipes(meta):
    view = ModelView(meta("vit_tiny_patch16_224"))
    with pytest.raises(layerdecay.UnknownRecipeError) as info:
        layerdecay_vit.layerdecay_num_layers(view, "official")
    message = str(info.value)
    assert "'official'" in message and "'mae', 'beit', 'timm'" in message and "vit plugin" in message


def _open_clip_like(depth: int = 2, width: int = 64) -> nn.Module:
    """OpenCLIP's image tower names (open_clip/transformer.py VisionTransformer), rebuilt on meta."""
    from layerdecay.testing import model_from_params

    entries = [["conv1.weight", [width, 3, 16, 16]], ["class_embedding", [width]],
               ["positional_embedding", [197, width]], ["ln_pre.weight", [width]], ["ln_pre.bias", [width]]]
    for i in range(depth):
        p = f"transformer.resblocks.{i}."
        entries += [[p + "ln_1.weight", [width]], [p + "ln_1.bias", [width]],
                    [p + "attn.in_proj_weight", [3 * width, width]], [p + "attn.in_proj_bias", [3 * width]],
                    [p + "attn.out_proj.weight", [width, width]], [p + "attn.out_proj.bias", [width]],
                    [p + "ln_2.weight", [width]], [p + "ln_2.bias", [width]],
                    [p + "mlp.c_fc.weight", [4 * width, width]], [p + "mlp.c_fc.bias", [4 * width]],
                    [p + "mlp.c_proj.weight", [width, 4 * width]], [p + "mlp.c_proj.bias", [width]]]
    entries += [["ln_post.weight", [width]], ["ln_post.bias", [width]], ["proj", [width, 32]]]
    return model_from_params(entries, module_types={r"(.*\.)?ln_\w+": "LayerNorm"})


def test_open_clip_image_tower(plan):
    model = _open_clip_like()
    mae = {r.name: r.layer_id for r in plan(model).rows}
    assert mae["conv1.weight"] == mae["class_embedding"] == mae["positional_embedding"] == mae["ln_pre.weight"] == 0
    assert mae["transformer.resblocks.1.mlp.c_fc.weight"] == 2
    assert mae["ln_post.weight"] == mae["proj"] == 3
    timm_ids = {r.name: r.layer_id for r in plan(model, "timm").rows}
    assert timm_ids["ln_post.weight"] == 2  # the final norm joins the last block, as timm's ``norm`` does
    assert timm_ids["proj"] == 3
