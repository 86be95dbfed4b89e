"""Shared fixtures of the vit plugin's tests: an isolated plugin host and the parameter-name fixtures."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import layerdecay
from layerdecay.testing import model_from_params

DATA = Path(__file__).parent / "data"
DECAY = 0.75
WD = 0.05
# Norm modules in the rebuilt fixtures get a class named LayerNorm, as in the libraries they mirror.
NORM_TYPES = {r"(.*\.)?(norm\w*|layernorm\w*|ln(_\d)?|fc_norm)": "LayerNorm"}


@pytest.fixture(scope="session")
def host() -> layerdecay.PluginHost:
    """Only the vit plugin and the core: the assertions are about this plugin alone."""
    return layerdecay.create_plugin_host(enable=["vit"], autoload=True)


@pytest.fixture(scope="session")
def plan(host: layerdecay.PluginHost) -> Callable[..., layerdecay.Plan]:
    def make(model: nn.Module, recipe: str | None = None, **kwargs: object) -> layerdecay.Plan:
        kwargs.setdefault("layer_decay", DECAY)
        kwargs.setdefault("weight_decay", WD)
        return layerdecay.explain(model, recipe=recipe, host=host, **kwargs)

    return make


@pytest.fixture(scope="session")
def fixture_params() -> Callable[[str], list[list[object]]]:
    def load(stem: str) -> list[list[object]]:
        return json.loads((DATA / f"{stem}.json").read_text())["params"]

    return load


@pytest.fixture(scope="session")
def fixture_model(fixture_params: Callable[[str], list[list[object]]]) -> Callable[[str], nn.Module]:
    def build(stem: str) -> nn.Module:
        return model_from_params(fixture_params(stem), module_types=NORM_TYPES)

    return build


@pytest.fixture(scope="session")
def meta() -> Callable[..., nn.Module]:
    """Build a timm model on the meta device (no memory, no weights)."""
    timm = pytest.importorskip("timm")

    def build(name: str, **kwargs: object) -> nn.Module:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)

    return build


def layer_of_scale(scale: float, num_layers: int, decay: float = DECAY) -> int:
    """The layer id whose exponential scale is ``scale`` (inverts decay ** (top - id))."""
    return num_layers - 1 - round(math.log(scale) / math.log(decay))


def mae_rule(name: str, depth: int) -> int:
    """MAE util/lr_decay.py get_layer_id_for_vit; ids run 0..depth+1. Extended, as the plugin documents,
    to parts MAE's models lack: every token (dist/reg/mask) and CLIP's norm_pre are stem."""
    if name in ("cls_token", "pos_embed") or name.endswith("_token") or name.startswith("patch_embed"):
        return 0
    if name.startswith("norm_pre."):  # CLIP's pre-block norm: part of the stem (MAE's models have none)
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def beit_rule(name: str, depth: int) -> int:
    """BEiT optim_factory.py get_num_layer_for_vit with num_max_layer = depth + 2."""
    num_max_layer = depth + 2
    if name in ("cls_token", "mask_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("rel_pos_bias"):
        return num_max_layer - 1
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return num_max_layer - 1


@pytest.fixture(scope="session")
def rules() -> SimpleNamespace:
    """The published rules, written from the papers' code, independent of the plugin."""
    return SimpleNamespace(mae=mae_rule, beit=beit_rule, layer_of_scale=layer_of_scale)
