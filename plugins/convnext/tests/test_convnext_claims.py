"""What the plugin claims: ConvNeXt only; and how it shows up as an installed plugin."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from torch import nn

import layerdecay
import layerdecay_convnext
from layerdecay import ModelView
from layerdecay.cli import main

# References only: the plugin itself never imports these.
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")


def _not_convnext() -> dict[str, nn.Module]:
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
    with torch.device("meta"):
        return {
            "timm vit": timm.create_model("vit_tiny_patch16_224", pretrained=False),
            "timm swin": timm.create_model("swin_tiny_patch4_window7_224", pretrained=False),
            "timm swinv2": timm.create_model("swinv2_tiny_window8_256", pretrained=False),
            # depthwise convolutions, but expansion before the depthwise one (inverted residuals)
            "timm mobilenetv3": timm.create_model("mobilenetv3_small_100", pretrained=False),
            "timm efficientnet": timm.create_model("efficientnet_b0", pretrained=False),
            "torchvision vit": torchvision.models.vit_b_16(weights=None),
            "torchvision swin": torchvision.models.swin_t(weights=None),
            "torchvision mobilenet": torchvision.models.mobilenet_v3_small(weights=None),
            "transformers vit": transformers.ViTForImageClassification(transformers.ViTConfig(**small)),
            "transformers swin": transformers.SwinModel(transformers.SwinConfig(embed_dim=32, depths=[1, 1],
                                                                                num_heads=[1, 2])),
            "transformers bert": transformers.BertModel(transformers.BertConfig(**small)),
        }


def test_other_families_are_not_claimed() -> None:
    for label, model in _not_convnext().items():
        view = ModelView(model)
        assert layerdecay_convnext.layerdecay_num_layers(view, None) is None, label
        assert layerdecay_convnext.layerdecay_layer_id(view, None, 4) is None, label
        # An unknown recipe is not this plugin's to reject when the model is not a ConvNeXt.
        assert layerdecay_convnext.layerdecay_num_layers(view, "official") is None, label
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", layerdecay.LayerDecayWarning)  # the generic fallback says so
            assert layerdecay.explain(model, layer_decay=0.75).owner != "convnext", label


def test_convnext_is_claimed_from_every_library() -> None:
    with torch.device("meta"):
        models = [
            timm.create_model("convnext_atto", pretrained=False),
            torchvision.models.convnext_tiny(weights=None),
            transformers.ConvNextModel(transformers.ConvNextConfig(depths=[2, 2, 6, 2])),
        ]
    for model in models:
        assert layerdecay_convnext.layerdecay_num_layers(ModelView(model), None) is not None
        assert layerdecay.explain(model).owner == "convnext"


def test_installed_plugin_lists_its_hooks(capsys) -> None:
    host = layerdecay.create_plugin_host()
    info = next(p for p in host.plugins if p.name == "convnext")
    assert info.status == "loaded" and info.source == "entry point"
    assert info.distribution == "layerdecay-convnext"
    assert set(info.hooks) == {"layerdecay_num_layers", "layerdecay_layer_id"}

    assert main(["plugins"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("convnext"))
    assert "layerdecay-convnext" in line and "num_layers" in line and "layer_id" in line
