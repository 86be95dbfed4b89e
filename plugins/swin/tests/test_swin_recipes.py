"""Swin plans against independent references: timm's own optimizer helper, SimMIM's published rule, and
the same network as four libraries build it (timm, torchvision, transformers 5, transformers 4 and the
original repo rebuilt from their parameter lists in tests/data)."""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

import layerdecay
from layerdecay.testing import model_from_params

timm = pytest.importorskip("timm")
from timm.optim import param_groups_layer_decay  # noqa: E402

DATA = Path(__file__).parent / "data"
HOST = layerdecay.create_plugin_host(autoload=True, enable=["swin"])
WD, DECAY = 0.05, 0.75
TINY = (2, 2, 6, 2)
NORM_TYPES = {r"(.*\.)?(norm\w*|layernorm\w*)": "LayerNorm"}


# -- independent references --------------------------------------------------------------------------------

def canonical(library: str, name: str) -> str:
    """The original repo's name for the same parameter (the per-library table in the project's notes)."""
    if library == "timm":
        name = re.sub(r"^head\.fc\.", "head.", name)
        return re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", name)
    if library == "torchvision":
        name = re.sub(r"^features\.0\.0\.", "patch_embed.proj.", name)
        name = re.sub(r"^features\.0\.2\.", "patch_embed.norm.", name)

        def block(m: re.Match[str]) -> str:
            index = int(m[1])
            return f"layers.{index // 2}.blocks.{m[2]}." if index % 2 else f"layers.{index // 2 - 1}.downsample.{m[2]}."

        return re.sub(r"^features\.(\d+)\.(\w+)\.", block, name)
    if library == "transformers":
        name = re.sub(r"^swin(v2)?\.", "", name)
        for pattern, repl in ((r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
                              (r"^embeddings\.norm\.", "patch_embed.norm."), (r"^encoder\.layers\.", "layers."),
                              (r"^layernorm\.", "norm."), (r"^classifier\.", "head.")):
            name = re.sub(pattern, repl, name)
        return name
    assert library == "original"
    return name


def role(canonical_name: str) -> str:
    """Which part of the network an original-repo name belongs to."""
    if m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", canonical_name):
        return f"block {m[1]}.{m[2]}"
    if m := re.match(r"layers\.(\d+)\.downsample\.", canonical_name):
        return f"merging after stage {m[1]}"
    if canonical_name.startswith("patch_embed.") or canonical_name in ("absolute_pos_embed", "mask_token"):
        return "stem"
    head = canonical_name.split(".")[0]
    assert head in ("norm", "head"), canonical_name
    return head


def simmim_layer(name: str, depths: tuple[int, ...]) -> int:
    """SimMIM's ``get_swin_layer`` (optimizer.py), on original-repo names; the one deliberate difference:
    ``absolute_pos_embed`` joins the stem (the published function leaves it to the top layer)."""
    num_layers = sum(depths) + 2
    if name in ("mask_token", "absolute_pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("layers"):
        stage, block = int(name.split(".")[1]), name.split(".")[3]
        if block in ("reduction", "norm"):
            return sum(depths[: stage + 1])
        return sum(depths[:stage]) + int(block) + 1
    return num_layers - 1


def reference_decay(name: str, param: torch.Tensor) -> bool:
    """Weight decay as SimMIM and timm decide it for Swin: 1-D, tables, v2 cpb MLP and logit scale excluded."""
    markers = ("relative_position_bias_table", "cpb_mlp", "continuous_position_bias_mlp", "logit_scale")
    return param.ndim > 1 and not any(m in name for m in markers)


def timm_scales_by_role(name: str, **kwargs: object) -> dict[str, set[float]]:
    """lr scale per role, from ``timm.optim.param_groups_layer_decay`` on the timm model."""
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, set[float]] = {}
    for group in param_groups_layer_decay(model, weight_decay=WD, layer_decay=DECAY,
                                          no_weight_decay_list=model.no_weight_decay()):
        for p in group["params"]:
            out.setdefault(role(canonical("timm", names[id(p)])), set()).add(round(group["lr_scale"], 10))
    return out


def plan(model: torch.nn.Module, recipe: str | None = None) -> layerdecay.Plan:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", layerdecay.LayerDecayWarning)
        result = layerdecay.explain(model, weight_decay=WD, layer_decay=DECAY, recipe=recipe, host=HOST)
    assert result.owner == "swin"
    # The one warning a correct Swin plan may carry: with recipe="timm" a model without a head has its last
    # block as the top layer (as in timm), and the core flags that block's relative-position table.
    for w in caught:
        assert recipe == "timm" and "top layer" in str(w.message), str(w.message)
    return result


def fixture(stem: str) -> torch.nn.Module:
    entries = json.loads((DATA / f"{stem}.json").read_text())["params"]
    return model_from_params(entries, module_types=NORM_TYPES)


def timm_model(name: str, **kwargs: object) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def torchvision_model(name: str) -> torch.nn.Module:
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        return getattr(torchvision.models, name)()


def transformers_model(v2: bool) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    common = dict(embed_dim=96, depths=list(TINY), num_heads=[3, 6, 12, 24], num_labels=1000)
    with torch.device("meta"):
        if v2:
            return transformers.Swinv2ForImageClassification(transformers.Swinv2Config(window_size=8, **common))
        return transformers.SwinForImageClassification(transformers.SwinConfig(window_size=7, **common))


# -- timm: parameter by parameter ---------------------------------------------------------------------------

TIMM_MODELS = ["swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256", "swin_base_patch4_window7_224"]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_recipe_equals_timm_param_groups(name: str) -> None:
    model = timm_model(name)
    expected = {}
    for group in param_groups_layer_decay(model, weight_decay=WD, layer_decay=DECAY,
                                          no_weight_decay_list=model.no_weight_decay()):
        for p in group["params"]:
            expected[id(p)] = (group["lr_scale"], group["weight_decay"])
    got = {}
    for group in plan(model, "timm").param_groups(lr=1.0):
        for _, p in group["params"]:
            got[id(p)] = (group["lr"], group["weight_decay"])
    assert got.keys() == expected.keys()
    names = {id(p): n for n, p in model.named_parameters()}
    for key, (scale, decay) in expected.items():
        assert got[key][0] == pytest.approx(scale, rel=1e-12), names[key]
        assert got[key][1] == decay, names[key]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_no_weight_decay_list_covers_position_parameters(name: str) -> None:
    """The core decides these by meaning; timm's list must say the same for the equality above to mean much."""
    model = timm_model(name)
    listed = model.no_weight_decay()
    markers = ("relative_position_bias_table", "cpb_mlp", "logit_scale")
    position = {n for n, _ in model.named_parameters() if any(m in n for m in markers)}
    assert position and position <= set(listed)


# -- SimMIM (default recipe) against the published rule ----------------------------------------------------

@pytest.mark.parametrize(
    ("library", "build", "depths"),
    [
        ("original", lambda: fixture("original__swin_tiny__microsoft_Swin-Transformer"), TINY),
        ("original", lambda: fixture("original__swinv2_tiny_w8__microsoft_Swin-Transformer"), TINY),
        ("timm", lambda: timm_model("swin_tiny_patch4_window7_224"), TINY),
        ("timm", lambda: timm_model("swin_base_patch4_window7_224"), (2, 2, 18, 2)),
        ("timm", lambda: timm_model("swinv2_tiny_window8_256"), TINY),
        ("timm", lambda: timm_model("swin_tiny_patch4_window7_224", depths=(1, 3, 4, 2)), (1, 3, 4, 2)),
        ("torchvision", lambda: torchvision_model("swin_t"), TINY),
        ("torchvision", lambda: torchvision_model("swin_v2_t"), TINY),
        ("transformers", lambda: transformers_model(v2=False), TINY),
        ("transformers", lambda: transformers_model(v2=True), TINY),
        ("transformers", lambda: fixture("transformers4__SwinForImageClassification"), TINY),
        ("transformers", lambda: fixture("transformers4__SwinModel"), TINY),
        ("transformers", lambda: fixture("transformers4__Swinv2ForImageClassification"), TINY),
    ],
)
def test_default_recipe_is_simmim_rule(library: str, build, depths: tuple[int, ...]) -> None:
    model = build()
    result = plan(model)
    assert result.num_layers == sum(depths) + 2
    top = sum(depths) + 1
    params = dict(model.named_parameters())
    for row in result.rows:
        name = canonical(library, row.name)
        assert row.layer_id == simmim_layer(name, depths), row.name
        assert row.lr_mult == pytest.approx(DECAY ** (top - row.layer_id)), row.name
        assert (row.weight_decay > 0) == reference_decay(row.name, params[row.name]), row.name
    assert [r.layer_id for r in plan(model, "simmim").rows] == [r.layer_id for r in result.rows]


def test_simmim_mask_token_and_absolute_position_embedding_join_the_stem() -> None:
    entries = json.loads((DATA / "original__swin_tiny__microsoft_Swin-Transformer.json").read_text())["params"]
    stem = [e for e in entries if e[0].startswith("patch_embed.")]
    rest = [e for e in entries if not e[0].startswith("patch_embed.")]
    # The original repo registers absolute_pos_embed after patch_embed; SimMIM's subclass adds mask_token last.
    entries = [*stem, ["absolute_pos_embed", [1, 3136, 96], True], *rest, ["mask_token", [1, 1, 96], True]]
    result = plan(model_from_params(entries, module_types=NORM_TYPES))
    rows = {r.name: r for r in result.rows}
    for name in ("absolute_pos_embed", "mask_token"):
        assert rows[name].layer_id == 0
        assert rows[name].weight_decay == 0.0
    assert rows["layers.0.downsample.reduction.weight"].layer_id == 2


# -- the same network from every library: same multiplier and decay per part -------------------------------

def _by_role(library: str, model: torch.nn.Module, recipe: str) -> dict[str, set[tuple[float, float]]]:
    out: dict[str, set[tuple[float, float]]] = {}
    params = dict(model.named_parameters())
    for row in plan(model, recipe).rows:
        assert (row.weight_decay > 0) == reference_decay(row.name, params[row.name]), row.name
        out.setdefault(role(canonical(library, row.name)), set()).add(round(row.lr_mult, 10))
    return out


@pytest.mark.parametrize(
    ("library", "build", "timm_name", "timm_kwargs"),
    [
        ("torchvision", lambda: torchvision_model("swin_t"), "swin_tiny_patch4_window7_224", {}),
        ("torchvision", lambda: torchvision_model("swin_v2_t"), "swinv2_tiny_window8_256", {}),
        ("transformers", lambda: transformers_model(v2=False), "swin_tiny_patch4_window7_224", {}),
        ("transformers", lambda: transformers_model(v2=True), "swinv2_tiny_window8_256", {}),
        ("transformers", lambda: fixture("transformers4__SwinForImageClassification"),
         "swin_tiny_patch4_window7_224", {}),
        ("transformers", lambda: fixture("transformers4__Swinv2ForImageClassification"),
         "swinv2_tiny_window8_256", {}),
        ("transformers", lambda: fixture("transformers4__SwinModel"), "swin_tiny_patch4_window7_224",
         {"num_classes": 0}),
        ("original", lambda: fixture("original__swin_tiny__microsoft_Swin-Transformer"),
         "swin_tiny_patch4_window7_224", {}),
        ("original", lambda: fixture("original__swinv2_tiny_w8__microsoft_Swin-Transformer"),
         "swinv2_tiny_window8_256", {}),
    ],
)
def test_timm_recipe_gives_every_library_timms_scale_per_part(library, build, timm_name, timm_kwargs) -> None:
    expected = timm_scales_by_role(timm_name, **timm_kwargs)
    got = _by_role(library, build(), "timm")
    assert got == expected
    # The PatchMerging between stage 0 and stage 1 is one part, whichever stage the library files it under.
    assert len(got["merging after stage 0"]) == 1


def _totals(model: torch.nn.Module, recipe: str, three_part_qkv_bias: bool = False) -> Counter:
    totals: Counter = Counter()
    for row in plan(model, recipe).rows:
        numel = row.numel
        if three_part_qkv_bias and row.name.endswith("attn.qkv.bias"):
            numel = numel * 2 // 3  # torchvision v2 stores a key bias that it zeroes; timm stores q and v only
        totals[(round(row.lr_mult, 10), row.weight_decay)] += numel
    return totals


@pytest.mark.parametrize("recipe", ["simmim", "timm"])
def test_v1_libraries_have_equal_elements_per_multiplier_and_decay(recipe: str) -> None:
    reference = _totals(timm_model("swin_tiny_patch4_window7_224"), recipe)
    assert _totals(torchvision_model("swin_t"), recipe) == reference
    assert _totals(transformers_model(v2=False), recipe) == reference
    assert _totals(fixture("original__swin_tiny__microsoft_Swin-Transformer"), recipe) == reference
    assert len(reference) > 2 * (sum(TINY) + 1) - 2


@pytest.mark.parametrize("recipe", ["simmim", "timm"])
def test_v2_libraries_have_equal_elements_per_multiplier_and_decay(recipe: str) -> None:
    reference = _totals(timm_model("swinv2_tiny_window8_256"), recipe)
    assert _totals(transformers_model(v2=True), recipe) == reference
    assert _totals(fixture("original__swinv2_tiny_w8__microsoft_Swin-Transformer"), recipe) == reference
    assert _totals(torchvision_model("swin_v2_t"), recipe, three_part_qkv_bias=True) == reference


@pytest.mark.parametrize(
    ("build", "merge_stage"),
    [
        (lambda: timm_model("swin_tiny_patch4_window7_224"), "layers.1.downsample.reduction.weight"),
        (lambda: torchvision_model("swin_t"), "features.2.reduction.weight"),
        (lambda: transformers_model(v2=False), "swin.encoder.layers.0.downsample.reduction.weight"),
        (lambda: fixture("original__swin_tiny__microsoft_Swin-Transformer"), "layers.0.downsample.reduction.weight"),
    ],
)
def test_first_patch_merging_gets_one_id_whatever_its_index(build, merge_stage: str) -> None:
    model = build()
    simmim = {r.name: r.layer_id for r in plan(model).rows}
    timm_ids = {r.name: r.layer_id for r in plan(model, "timm").rows}
    assert simmim[merge_stage] == TINY[0]  # with the last block of stage 0
    assert timm_ids[merge_stage] == TINY[0] + 1  # with the first block of stage 1
