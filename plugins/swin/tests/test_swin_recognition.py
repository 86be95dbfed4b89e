"""Which models the Swin plugin claims, and how nesting, wrappers and freezing leave its plans unchanged."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import layerdecay
import layerdecay_swin
from layerdecay import ModelView, UnknownRecipeError

timm = pytest.importorskip("timm")

HOST = layerdecay.create_plugin_host(autoload=True, enable=["swin"])


def build(factory, *args, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return factory(*args, **kwargs)


def plan(model: nn.Module, recipe: str | None = None) -> layerdecay.Plan:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", layerdecay.LayerDecayWarning)
        return layerdecay.explain(model, weight_decay=0.05, layer_decay=0.75, recipe=recipe, host=HOST)


def ids(model: nn.Module, recipe: str | None = None) -> dict[str, int]:
    return {r.name: r.layer_id for r in plan(model, recipe).rows}


# -- models that are not Swin ------------------------------------------------------------------------------

def _bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=128, vocab_size=100)
    return build(transformers.BertModel, config)


def _torchvision_vit() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    return build(torchvision.models.vit_b_16)


NON_SWIN = {
    "timm vit (patch_embed + blocks, no stages)": lambda: build(timm.create_model, "vit_tiny_patch16_224"),
    "timm beit (relative tables in one run of blocks)": lambda: build(timm.create_model, "beit_base_patch16_224"),
    "timm convnext (stages of blocks, no windows)": lambda: build(timm.create_model, "convnext_atto"),
    "timm maxvit (windowed stages, conv downsampling)": lambda: build(timm.create_model, "maxvit_nano_rw_256"),
    "transformers bert": _bert,
    "torchvision vit_b_16": _torchvision_vit,
}


@pytest.mark.parametrize("label", sorted(NON_SWIN))
def test_non_swin_models_are_not_claimed(label: str) -> None:
    model = NON_SWIN[label]()
    view = ModelView(model)
    for recipe in (None, "simmim", "timm", "mae"):  # another family's recipe must not raise here either
        assert layerdecay_swin.layerdecay_num_layers(view, recipe) is None
        assert layerdecay_swin.layerdecay_layer_id(view, recipe, 5) is None
    assert plan(model).owner != "swin"


# -- recipes -----------------------------------------------------------------------------------------------

def test_unknown_recipe_names_the_offered_ones() -> None:
    model = build(timm.create_model, "swin_tiny_patch4_window7_224")
    with pytest.raises(UnknownRecipeError, match=r"'simmim'.*'timm'"):
        plan(model, "mae")


def test_recipe_none_is_simmim() -> None:
    model = build(timm.create_model, "swin_tiny_patch4_window7_224")
    assert ids(model) == ids(model, "simmim")
    assert ids(model) != ids(model, "timm")


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("swin_tiny_patch4_window7_224", {}),
        ("swin_small_patch4_window7_224", {}),
        ("swin_large_patch4_window7_224", {}),
        ("swinv2_small_window8_256", {}),
        ("swin_tiny_patch4_window7_224", {"depths": (3, 1, 5, 4), "num_heads": (3, 6, 12, 24)}),
        ("swin_tiny_patch4_window7_224", {"depths": (2, 2, 6), "num_heads": (3, 6, 12)}),
    ],
)
def test_layer_count_follows_the_model_depths(name: str, kwargs: dict) -> None:
    model = build(timm.create_model, name, **kwargs)
    depths = [len(stage.blocks) for stage in model.layers]
    assert plan(model).num_layers == sum(depths) + 2
    assert plan(model, "timm").num_layers == sum(depths) + 2


# -- nesting, wrappers, freezing ---------------------------------------------------------------------------

class Detector(nn.Module):
    """A detector-like model: the neck is registered before the backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.neck = nn.Linear(768, 256)
        self.backbone = timm.create_model("swin_tiny_patch4_window7_224", num_classes=0)
        self.bbox_head = nn.Linear(256, 4)


@pytest.mark.parametrize("recipe", ["simmim", "timm"])
def test_nested_backbone_keeps_its_ids_and_the_rest_goes_on_top(recipe: str) -> None:
    bare = ids(build(timm.create_model, "swin_tiny_patch4_window7_224"), recipe)
    nested_plan = plan(build(Detector), recipe)
    nested = {r.name: r.layer_id for r in nested_plan.rows}
    top = nested_plan.num_layers - 1
    assert nested_plan.num_layers == 14
    for name, layer_id in nested.items():
        if name.startswith("backbone."):
            assert layer_id == bare[name.removeprefix("backbone.")], name
        else:
            assert layer_id == top, name


class Classifier(nn.Module):
    """A user's wrapper around a transformers base model (no base-model prefix of its own)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(768, 5)


@pytest.mark.parametrize("recipe", ["simmim", "timm"])
def test_wrapped_transformers_model_matches_the_library_head_model(recipe: str) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)
    library = ids(build(transformers.SwinForImageClassification, config), recipe)
    wrapped = ids(build(lambda: Classifier(transformers.SwinModel(config))), recipe)
    rename = {"encoder.": "swin.", "fc.": "classifier."}
    for name, layer_id in wrapped.items():
        prefix = next(p for p in rename if name.startswith(p))
        assert layer_id == library[rename[prefix] + name[len(prefix):]], name


def test_ddp_style_wrapper_is_peeled() -> None:
    model = build(timm.create_model, "swin_tiny_patch4_window7_224")
    wrapper = nn.Module()
    wrapper.module = model
    assert ids(wrapper) == ids(model)


@pytest.mark.parametrize("recipe", ["simmim", "timm"])
def test_frozen_parameters_do_not_shift_scales(recipe: str) -> None:
    model = build(timm.create_model, "swin_tiny_patch4_window7_224")
    before = plan(model, recipe)
    for p in model.patch_embed.parameters():
        p.requires_grad_(False)
    for p in model.layers[0].parameters():
        p.requires_grad_(False)
    after = plan(model, recipe)
    assert after.num_layers == before.num_layers
    assert after.scales == before.scales
    kept = {r.name: (r.layer_id, r.lr_mult, r.weight_decay) for r in before.rows}
    assert {r.name: (r.layer_id, r.lr_mult, r.weight_decay) for r in after.rows} == {
        n: v for n, v in kept.items() if not n.startswith(("patch_embed.", "layers.0."))
    }
    # The stem (0) and stage 0's blocks (1, 2) are frozen; the first PatchMerging, filed by timm under
    # layers.1, stays: SimMIM gives it stage 0's last id, timm the first id of stage 1.
    assert min(r.layer_id for r in after.rows) == (2 if recipe == "simmim" else 3)


@pytest.mark.parametrize("recipe", ["simmim", "timm"])
def test_timm_features_only_backbone_keeps_the_ids(recipe: str) -> None:
    """timm's ``features_only`` flattens ``layers.1`` to ``layers_1`` and drops the final norm and head."""
    bare = ids(build(timm.create_model, "swin_tiny_patch4_window7_224"), recipe)
    features = ids(build(timm.create_model, "swin_tiny_patch4_window7_224", features_only=True), recipe)
    assert features
    for name, layer_id in features.items():
        assert layer_id == bare[name.replace("layers_", "layers.", 1)], name


class SimMIMLike(nn.Module):
    """A backbone with its own parameters, as SimMIM's encoder adds ``mask_token`` after building the network."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = timm.create_model("swin_tiny_patch4_window7_224", num_classes=0)
        self.patch_embed = self.inner.patch_embed
        self.layers = self.inner.layers
        self.norm = self.inner.norm
        del self.inner
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 96))
        self.temperature = nn.Parameter(torch.ones(()))


def test_backbone_tokens_join_the_stem_and_other_own_parameters_go_on_top() -> None:
    result = plan(build(SimMIMLike))
    rows = {r.name: r.layer_id for r in result.rows}
    assert rows["mask_token"] == 0
    assert rows["temperature"] == result.num_layers - 1
    assert rows["layers.1.downsample.reduction.weight"] == 2
