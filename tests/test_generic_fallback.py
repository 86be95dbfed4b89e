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
        nn.ModuleList([nn.Conv1d(2, 2, 1) for _ in range(6)]),  # 6 blocks, 36 elements
        nn.ModuleList([nn.Linear(16, 16) for _ in range(2)]),  # 2 blocks, 544 elements, of another type
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


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_sibling_stages_are_joined_as_timm_groups_a_resnet(arch, bare_host):
    # torchvision's ResNet holds its stages as the attributes layer1 .. layer4, named as timm's ResNet is; timm's
    # fine group_matcher gives the stem 0, each block its own id and the head the last.
    import torchvision
    from timm.models import group_parameters

    with torch.device("meta"):
        model = getattr(torchvision.models, arch)()
        reference_model = timm.create_model(arch)
    reference = group_parameters(reference_model, reference_model.group_matcher(coarse=False), reverse=True)
    with pytest.warns(layerdecay.LayerDecayWarning, match="generic fallback"):
        plan = layerdecay.explain(model, host=bare_host)
    assert plan.fallback.startswith("repeated blocks in 'layer1', 'layer2', 'layer3', 'layer4' (")
    assert {row.name: row.layer_id for row in plan.rows} == reference
    assert plan.num_layers == max(reference.values()) + 1


def test_sibling_stages_are_found_through_wrappers(bare_host):
    import torchvision
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    plain = torchvision.models.resnet18()
    wrapped = torchvision.models.resnet18()
    for stage in (wrapped.layer1, wrapped.layer2, wrapped.layer3, wrapped.layer4):
        for i in range(len(stage)):
            stage[i] = checkpoint_wrapper(stage[i])  # each block wrapped, as activation checkpointing does
    wrapped.layer3 = checkpoint_wrapper(wrapped.layer3)  # and a whole stage
    with pytest.warns(layerdecay.LayerDecayWarning):
        expected = {row.name: row.layer_id for row in layerdecay.explain(plain, host=bare_host).rows}
        plan = layerdecay.explain(torch.compile(wrapped), host=bare_host)
    assert {row.name: row.layer_id for row in plan.rows} == expected
    assert plan.num_layers == 10


def test_sibling_stages_of_one_block_join_an_efficientnet(bare_host):
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.efficientnet_b0()
    with pytest.warns(layerdecay.LayerDecayWarning, match="generic fallback"):
        plan = layerdecay.explain(model, host=bare_host)
    # features.0 is the stem, features.1 .. features.7 the stages (features.1 and .7 of one block each),
    # features.8 the head convolution.
    blocks = [f"features.{s}.{b}" for s in range(1, 8) for b in range(len(model.features[s]))]
    assert len(blocks) == 16
    for row in plan.rows:
        owner = ".".join(row.name.split(".")[:3])
        if row.name.startswith("features.0."):
            assert row.layer_id == 0, row.name
        elif owner in blocks:
            assert row.layer_id == blocks.index(owner) + 1, row.name
        else:  # features.8, the classifier
            assert row.layer_id == len(blocks) + 1, row.name


def test_a_sibling_with_other_parameters_ends_the_run(bare_host):
    def stage(n: int, width: int = 4) -> nn.Sequential:
        return nn.Sequential(*[nn.Linear(width, width) for _ in range(n)])

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(4, 4)
            self.first = stage(2)
            self.act = nn.ReLU()  # no parameters: passed over
            self.second = stage(3)
            self.mix = nn.Conv1d(4, 4, 1)  # parameters of its own: the run ends here
            self.third = stage(2)
            self.other = nn.Sequential(nn.Conv1d(4, 4, 1), nn.Conv1d(4, 4, 1))  # blocks of another type

    with pytest.warns(layerdecay.LayerDecayWarning):
        plan = layerdecay.explain(Net(), host=bare_host)
    assert plan.fallback == "repeated blocks in 'first', 'second' (5 blocks)"
    ids = {r.name.rsplit(".", 1)[0]: r.layer_id for r in plan.rows}
    assert ids == {"stem": 0, "first.0": 1, "first.1": 2, "second.0": 3, "second.1": 4, "second.2": 5,
                   "mix": 6, "third.0": 6, "third.1": 6, "other.0": 6, "other.1": 6}
