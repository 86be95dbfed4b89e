"""The generic fallback: timm's group_matcher reproduced exactly, the repeated-block search, and nothing."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.optim import param_groups_layer_decay
from torch import nn

import layerdecay


def timm_reference(model: nn.Module, layer_decay: float, weight_decay: float) -> dict[str, tuple[float, float]]:
    """name -> (lr scale, weight decay) from timm's own grouping."""
    nwd = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay,
                                      no_weight_decay_list=nwd)
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "convnext_atto", "swin_tiny_patch4_window7_224"])
def test_recipe_timm_reproduces_timm_parameter_by_parameter(arch, bare_host):
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    reference = timm_reference(model, 0.7, 0.05)
    with pytest.warns(layerdecay.LayerDecayWarning, match="generic fallback"):
        plan = layerdecay.explain(model, recipe="timm", layer_decay=0.7, weight_decay=0.05, host=bare_host)
    assert plan.fallback == "timm group_matcher()"
    assert len(plan.rows) == len(reference)
    for row in plan.rows:
        scale, wd = reference[row.name]
        assert row.lr_mult == pytest.approx(scale, rel=1e-12), row.name
        assert row.weight_decay == wd, row.name


def test_fallback_offers_only_timm_recipe(bare_host):
    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    with pytest.raises(layerdecay.UnknownRecipeError, match="'timm'"):
        layerdecay.explain(model, recipe="mae-typo", host=bare_host)


def test_repeated_block_container_on_a_bert_like_model(bare_host):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, num_labels=2)
    model = BertForSequenceClassification(config)
    with pytest.warns(layerdecay.LayerDecayWarning, match="generic fallback"):
        plan = layerdecay.explain(model, layer_decay=0.5, host=bare_host)
    assert plan.fallback == "repeated blocks in 'bert.encoder.layer' (3 blocks)"
    assert plan.num_layers == 5
    for row in plan.rows:
        if row.name.startswith("bert.embeddings."):
            assert row.layer_id == 0
        elif row.name.startswith("bert.encoder.layer."):
            assert row.layer_id == int(row.name.split(".")[3]) + 1
        else:  # pooler, classifier
            assert row.layer_id == 4
    assert plan.row("bert.embeddings.LayerNorm.weight").weight_decay == 0.0
    assert plan.row("bert.embeddings.word_embeddings.weight").weight_decay == 0.05


def test_nested_stages_expand_into_blocks(bare_host):
    class Stage(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.down = nn.Linear(4, 4)
            self.blocks = nn.Sequential(*[nn.Linear(4, 4) for _ in range(n)])

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(4, 4)
            self.stages = nn.Sequential(Stage(2), Stage(3))
            self.head = nn.Linear(4, 2)

    with pytest.warns(layerdecay.LayerDecayWarning):
        plan = layerdecay.explain(Net(), host=bare_host)
    ids = {r.name.rsplit(".", 1)[0]: r.layer_id for r in plan.rows}
    assert ids == {"stem": 0, "stages.0.down": 1, "stages.0.blocks.0": 1, "stages.0.blocks.1": 2,
                   "stages.1.down": 3, "stages.1.blocks.0": 3, "stages.1.blocks.1": 4, "stages.1.blocks.2": 5,
                   "head": 6}


def test_nothing_found_warns_and_strict_raises(bare_host):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.warns(layerdecay.LayerDecayWarning, match="layer_decay has no effect"):
        plan = layerdecay.explain(model, host=bare_host)
    assert plan.owner is None and plan.num_layers == 1
    with pytest.raises(layerdecay.PlanError, match="no effect"):
        layerdecay.explain(model, host=bare_host, strict=True)


def test_no_warning_when_decay_is_off(bare_host, recwarn):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    layerdecay.explain(model, layer_decay=1.0, host=bare_host)
    assert not [w for w in recwarn if issubclass(w.category, layerdecay.LayerDecayWarning)]


def test_a_block_is_expanded_only_when_its_container_holds_half_of_it(bare_host):
    class Block(nn.Module):
        def __init__(self, inner: int) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)  # 72 elements
            self.parts = nn.ModuleList([nn.Linear(inner, inner) for _ in range(2)])

    class Net(nn.Module):
        def __init__(self, inner: int) -> None:
            super().__init__()
            self.stem = nn.Linear(8, 8)
            self.blocks = nn.ModuleList([Block(inner) for _ in range(2)])
            self.head = nn.Linear(8, 2)

    with pytest.warns(layerdecay.LayerDecayWarning):
        small = layerdecay.explain(Net(inner=2), host=bare_host)  # parts: 12 of 84 elements per block
        large = layerdecay.explain(Net(inner=8), host=bare_host)  # parts: 144 of 216
    small_ids = {r.name.rsplit(".", 1)[0]: r.layer_id for r in small.rows}
    assert small_ids == {"stem": 0, "blocks.0.proj": 1, "blocks.0.parts.0": 1, "blocks.0.parts.1": 1,
                         "blocks.1.proj": 2, "blocks.1.parts.0": 2, "blocks.1.parts.1": 2, "head": 3}
    large_ids = {r.name.rsplit(".", 1)[0]: r.layer_id for r in large.rows}
    assert large_ids == {"stem": 0, "blocks.0.proj": 1, "blocks.0.parts.0": 1, "blocks.0.parts.1": 2,
                         "blocks.1.proj": 3, "blocks.1.parts.0": 3, "blocks.1.parts.1": 4, "head": 5}
    assert large.fallback == "repeated blocks in 'blocks' (4 blocks)"


def test_the_largest_container_is_chosen_by_elements_not_by_count(bare_host):
    model = nn.Sequential(
        nn.ModuleList([nn.Linear(2, 2) for _ in range(6)]),  # 6 blocks, 36 elements
        nn.ModuleList([nn.Linear(16, 16) for _ in range(2)]),  # 2 blocks, 544 elements
        nn.Linear(16, 2),  # so that the root is no container of same-typed blocks
    )
    with pytest.warns(layerdecay.LayerDecayWarning):
        plan = layerdecay.explain(model, host=bare_host)
    assert plan.fallback == "repeated blocks in '1' (2 blocks)"
    assert {r.layer_id for r in plan.rows if r.name.startswith("0.")} == {0}
    assert [plan.row(f"1.{b}.weight").layer_id for b in range(2)] == [1, 2]
    assert plan.row("2.weight").layer_id == 3


def test_a_container_of_blocks_without_parameters_is_no_layer_map(bare_host):
    # Two activations in a list are blocks of one type, but there is nothing in them to give a layer.
    model = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.ReLU(), nn.ReLU()]), nn.Linear(4, 2))
    with pytest.warns(layerdecay.LayerDecayWarning, match="layer_decay has no effect"):
        plan = layerdecay.explain(model, host=bare_host)
    assert plan.owner is None and plan.num_layers == 1
