"""Independent references for the ConvNeXt tests: each library's names -> one canonical name, models.

The canonical name says what a parameter is (``stem.conv.weight``, ``ds.2.norm.bias``,
``blk.2.7.fc1.weight``, ``final.norm.weight``, ``head.weight``), written per library from the tables in the
family reference, without the plugin's code. Comparing plans by canonical name checks that every library's
version of a configuration gets the same lr multiplier and weight decay for the same module.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

import layerdecay
from layerdecay.testing import model_from_params

DATA = Path(__file__).parent / "data"

_BLOCK_PARTS = {
    # timm
    "gamma": "ls", "conv_dw": "dw", "norm": "norm", "mlp.fc1": "fc1", "mlp.fc2": "fc2", "mlp.grn": "grn",
    # torchvision
    "layer_scale": "ls", "block.0": "dw", "block.2": "norm", "block.3": "fc1", "block.5": "fc2",
    # transformers
    "layer_scale_parameter": "ls", "dwconv": "dw", "layernorm": "norm", "pwconv1": "fc1", "pwconv2": "fc2",
    "grn": "grn",
}
_GRN_LOCAL = {"gamma": "weight", "beta": "bias"}  # the research repo's GRN names


def _block_part(rest: str) -> str:
    # rest: what follows the block index, e.g. "mlp.fc1.weight", "layer_scale", "grn.gamma".
    if rest in _BLOCK_PARTS:
        return _BLOCK_PARTS[rest]
    module, _, local = rest.rpartition(".")
    part = _BLOCK_PARTS[module]
    if part == "grn":
        local = _GRN_LOCAL.get(local, local)
    return f"{part}.{local}"


def canonical(library: str, name: str) -> str:
    """The canonical name of parameter ``name`` of a ConvNeXt built by ``library``."""
    if library == "timm":
        rules = [
            (r"stem\.0\.(\w+)", "stem.conv.{0}"), (r"stem\.1\.(\w+)", "stem.norm.{0}"),
            (r"stages\.(\d+)\.downsample\.0\.(\w+)", "ds.{0}.norm.{1}"),
            (r"stages\.(\d+)\.downsample\.1\.(\w+)", "ds.{0}.conv.{1}"),
            (r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", "blk"),
            (r"(?:head\.norm|norm_pre)\.(\w+)", "final.norm.{0}"), (r"head\.fc\.(\w+)", "head.{0}"),
        ]
    elif library == "torchvision":
        m = re.fullmatch(r"features\.(\d+)\.(.+)", name)
        if m and int(m[1]) % 2 == 1:
            s, b, rest = (int(m[1]) - 1) // 2, *m[2].split(".", 1)
            return f"blk.{s}.{b}.{_block_part(rest)}"
        rules = [
            (r"features\.0\.0\.(\w+)", "stem.conv.{0}"), (r"features\.0\.1\.(\w+)", "stem.norm.{0}"),
            (r"features\.(\d+)\.0\.(\w+)", "dsx.norm"), (r"features\.(\d+)\.1\.(\w+)", "dsx.conv"),
            (r"classifier\.0\.(\w+)", "final.norm.{0}"), (r"classifier\.2\.(\w+)", "head.{0}"),
        ]
    elif library == "transformers":
        name = re.sub(r"^convnext(v2)?\.", "", name)
        rules = [
            (r"embeddings\.patch_embeddings\.(\w+)", "stem.conv.{0}"),
            (r"embeddings\.layernorm\.(\w+)", "stem.norm.{0}"),
            (r"encoder\.stages\.(\d+)\.downsampling_layer\.0\.(\w+)", "ds.{0}.norm.{1}"),
            (r"encoder\.stages\.(\d+)\.downsampling_layer\.1\.(\w+)", "ds.{0}.conv.{1}"),
            (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)", "blk"),
            (r"layernorm\.(\w+)", "final.norm.{0}"), (r"classifier\.(\w+)", "head.{0}"),
        ]
    elif library == "original":
        rules = [
            (r"downsample_layers\.0\.0\.(\w+)", "stem.conv.{0}"), (r"downsample_layers\.0\.1\.(\w+)", "stem.norm.{0}"),
            (r"downsample_layers\.(\d+)\.0\.(\w+)", "ds.{0}.norm.{1}"),
            (r"downsample_layers\.(\d+)\.1\.(\w+)", "ds.{0}.conv.{1}"),
            (r"stages\.(\d+)\.(\d+)\.(.+)", "blk"),
            (r"norm\.(\w+)", "final.norm.{0}"), (r"head\.(\w+)", "head.{0}"),
        ]
    else:
        raise ValueError(library)
    for pattern, template in rules:
        m = re.fullmatch(pattern, name)
        if m is None:
            continue
        if template == "blk":
            return f"blk.{m[1]}.{m[2]}.{_block_part(m[3])}"
        if template.startswith("dsx"):  # torchvision: features.(2S) is stage S's downsample
            return f"ds.{int(m[1]) // 2}.{template[4:]}.{m[2]}"
        return template.format(*m.groups())
    raise AssertionError(f"{library}: no canonical name for {name!r}")


# Module types for models rebuilt from fixtures, so that rules by module type fire as in the real classes.
HF_TYPES = {r".*layernorm|.*downsampling_layer\.0": "ConvNextLayerNorm", r".*\.grn": "ConvNextV2GRN"}
ORIGINAL_TYPES = {
    r"downsample_layers\.0\.1|downsample_layers\.[1-9]\d*\.0|stages\.\d+\.\d+\.norm|norm": "LayerNorm",
    r"stages\.\d+\.\d+\.grn": "GRN",
}


def load_fixture(filename: str) -> dict:
    return json.loads((DATA / filename).read_text())


def fixture_model(filename: str) -> torch.nn.Module:
    types = ORIGINAL_TYPES if filename.startswith("original__") else HF_TYPES
    return model_from_params(load_fixture(filename)["params"], module_types=types)


def plan_of(model: torch.nn.Module, recipe: str | None = None, **kwargs) -> layerdecay.Plan:
    """The plan, failing on any warning (an empty layer id, a fallback) unless the test expects it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", layerdecay.LayerDecayWarning)
        return layerdecay.explain(model, recipe=recipe, weight_decay=0.05, layer_decay=0.75, **kwargs)


def by_canonical(plan: layerdecay.Plan, library: str) -> dict[str, tuple[int, float, float]]:
    """Canonical name -> (layer id, lr multiplier, weight decay)."""
    return {canonical(library, r.name): (r.layer_id, round(r.lr_mult, 12), r.weight_decay) for r in plan.rows}
