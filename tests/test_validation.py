"""Plan validation: each warning is triggered by a model built for it, and only there."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import layerdecay
from layerdecay.validation import ParamFact, PlanFacts, check_plan, looks_like_embedding


class Cell(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)


class Net(nn.Module):
    """patch -> cells -> head; optional embedding-like parameters that a layer map may miss."""

    def __init__(self, depth: int = 3, dim: int = 4, embeddings: bool = False) -> None:
        super().__init__()
        self.patch = nn.Linear(3, dim)
        if embeddings:
            self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.extra = nn.Parameter(torch.zeros(1, 2, dim))  # no telling name: caught by its [1,N,C] shape
        self.cells = nn.ModuleList(Cell(dim) for _ in range(depth))
        self.head = nn.Linear(dim, 2)


class Lone(nn.Module):
    """Nothing repeated: neither a plugin nor the generic fallback can find layers."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


class MapRule:
    """Claims Net with a fixed layer count and a given name -> layer id function."""

    def __init__(self, num_layers: int, layer_id) -> None:
        self.__name__ = "map-rule"
        self.n = num_layers
        self.fn = layer_id

    @layerdecay.hookimpl
    def layerdecay_num_layers(self, model, recipe):
        return self.n if isinstance(model.model, Net) else None

    @layerdecay.hookimpl
    def layerdecay_layer_id(self, model, num_layers):
        return self.fn if isinstance(model.model, Net) else None


def by_cell(offset: int = 1, top: int | None = None):
    """patch -> 0, cells.i -> i + offset, anything else -> top."""

    def layer_id(name: str) -> int:
        if name.startswith("patch."):
            return 0
        if name.startswith("cells."):
            return int(name.split(".")[1]) + offset
        return top

    return layer_id


@pytest.fixture
def host() -> layerdecay.PluginHost:
    return layerdecay.create_plugin_host(autoload=False)


def plan_of(model, host, rule=None, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = layerdecay.explain(model, host=host, plugins=[rule] if rule else (), **kwargs)
    issued = [str(w.message) for w in caught if issubclass(w.category, layerdecay.LayerDecayWarning)]
    assert issued == list(plan.warnings), "every plan warning is also issued as a LayerDecayWarning"
    return plan


def notes_with(plan, text: str) -> list[str]:
    return [w for w in plan.warnings if text in w]


def test_gap_is_reported_with_the_empty_ids(host):
    # depth 2: patch 0, cells 1-2, head 5 -> ids 3 and 4 hold nothing.
    plan = plan_of(Net(depth=2), host, MapRule(6, by_cell(top=5)))
    (note,) = notes_with(plan, "hold no parameter")
    assert "layer ids 3-4 " in note
    assert [s.tensors for s in plan.layers()] == [2, 2, 2, 0, 0, 2]


def test_layer_holding_only_frozen_parameters_is_not_a_gap(host):
    model = Net(depth=2)
    model.cells[1].requires_grad_(False)  # layer 2 holds only frozen parameters
    plan = plan_of(model, host, MapRule(4, by_cell(top=3)))
    assert {r.layer_id for r in plan.rows} == {0, 1, 3}
    assert notes_with(plan, "hold no parameter") == []


def test_no_gap_warning_when_every_id_is_used(host):
    plan = plan_of(Net(depth=2), host, MapRule(4, by_cell(top=3)))
    assert plan.warnings == ()


def test_everything_in_one_layer_is_reported_once(host):
    model = Net(depth=3)
    plan = plan_of(model, host, MapRule(3, lambda name: 1))
    n_params = len(list(model.parameters()))
    assert plan.warnings == (
        f"all {n_params} trainable parameters of Net are in layer id 1 (of 3), so layer_decay has no effect; "
        "plugin 'map-rule' did not tell the layers apart.",
    )


def test_collapse_is_fine_without_layer_decay(host):
    plan = plan_of(Net(), host, MapRule(3, lambda name: 1), layer_decay=1.0)
    assert notes_with(plan, "layer_decay has no effect") == []


def test_embedding_like_parameters_on_top_are_named(host):
    model = Net(depth=2, embeddings=True)
    plan = plan_of(model, host, MapRule(4, by_cell(top=3)))
    assert plan.row("pos_embed").layer_id == 3  # the rule did not know them: they fell to the top
    (note,) = notes_with(plan, "look like embeddings or tokens")
    assert note.startswith("3 parameter(s) in the top layer 3")
    assert "look like embeddings or tokens (pos_embed, cls_token, extra);" in note


def test_embeddings_placed_by_the_rule_are_not_reported(host):
    def layer_id(name: str) -> int:
        return 0 if name in ("pos_embed", "cls_token", "extra") else by_cell(top=3)(name)

    plan = plan_of(Net(depth=2, embeddings=True), host, MapRule(4, layer_id))
    assert notes_with(plan, "embeddings") == []


@pytest.mark.parametrize(("name", "shape", "expected"), [
    ("pos_embed", (1, 197, 768), True),
    ("cls_token", (1, 1, 768), True),
    ("vit.embeddings.position_embeddings", (1, 197, 768), True),
    ("bert.embeddings.word_embeddings.weight", (30522, 768), True),
    ("encoder.pos_embedding", (1, 197, 768), True),
    ("class_token", (1, 1, 768), True),
    ("mask_token", (768,), True),
    ("extra_queries", (1, 10, 256), True),  # by shape alone, held by the model itself
    ("attn_pool.latent", (1, 1, 768), False),  # the same shape inside a module: that module's state
    ("rel_pos_bias.relative_position_bias_table", (732, 12), False),
    ("blocks.0.attn.relative_position_bias_table", (1, 169, 3), False),
    ("post_layernorm.weight", (768,), False),
    ("head.weight", (1000, 768), False),
    ("blocks.0.attn.proj.weight", (768, 768), False),
])
def test_looks_like_embedding(name, shape, expected):
    assert looks_like_embedding(name, shape) is expected


def test_unused_patterns_are_named_used_ones_are_not(host):
    plan = plan_of(Net(), host, no_weight_decay=["head", "nothing.*"], lr_mult={"missing": 2.0, "patch": 3.0})
    unused = [w for w in plan.warnings if "matched no trainable parameter" in w]
    assert len(unused) == 2
    assert unused[0].startswith("no_weight_decay pattern 'nothing.*'")
    assert unused[1].startswith("lr_mult pattern 'missing'")


def test_generic_fallback_is_reported_and_decays_by_depth(host):
    plan = plan_of(Net(depth=3), host, layer_decay=0.5)
    assert plan.owner == "generic"
    (note,) = notes_with(plan, "generic fallback")
    assert "no plugin claimed Net" in note and "repeated blocks in 'cells' (3 blocks)" in note
    # patch -> 0, cells -> 1..3, head -> 4: decay ** (top - i)
    assert plan.num_layers == 5
    assert plan.scales == pytest.approx([0.5 ** (4 - i) for i in range(5)])


def test_min_scale_clamping_names_the_layers(host):
    plan = plan_of(Net(depth=3), host, layer_decay=0.5, min_scale=0.3)
    (note,) = notes_with(plan, "min_scale")
    assert note.startswith("min_scale=0.3 raised the scale of 3 layer id(s) (0-2)")
    assert plan.scales == pytest.approx([0.3, 0.3, 0.3, 0.5, 1.0])


def test_min_scale_at_a_scale_clamps_nothing(host):
    plan = plan_of(Net(depth=3), host, layer_decay=0.5, min_scale=0.0625)
    assert notes_with(plan, "min_scale") == []


def test_no_plugin_understood_the_model(host):
    plan = plan_of(Lone(), host)
    assert plan.owner is None and plan.num_layers == 1
    (note,) = plan.warnings
    assert note.startswith("no plugin understood Lone")
    assert plan_of(Lone(), host, layer_decay=1.0).warnings == ()


def test_strict_turns_warnings_into_plan_error(host):
    with pytest.raises(layerdecay.PlanError, match="nothing.*matched no trainable parameter"):
        layerdecay.explain(Net(), host=host, plugins=[MapRule(5, by_cell(top=4))], no_weight_decay=["nothing"],
                           strict=True)


def test_warnings_reach_the_table(host):
    plan = plan_of(Net(depth=2), host, MapRule(6, by_cell(top=5)))
    text = plan.table()
    assert "warnings:" in text
    assert f"  ! {plan.warnings[0]}" in text


def test_check_plan_on_facts_alone():
    facts = PlanFacts(
        model_name="M", num_layers=9, layer_decay=0.8, owner="p",
        trainable=3, used_layer_ids={0, 4, 8}, top_params=[ParamFact("c", (2,), 8)],
        all_layer_ids=lambda: {0, 4, 8, 5}, clamped=[0, 1, 2, 4], min_scale=0.1,
    )
    notes = check_plan(facts)
    assert notes[0].startswith("min_scale=0.1 raised the scale of 4 layer id(s) (0-2, 4)")
    assert notes[1].startswith("layer ids 1-3, 6-7 hold no parameter")
    assert len(notes) == 2


def test_negligible_scales_warn_and_never_underflow_to_zero(host):
    depth = 3000
    plan = plan_of(Net(depth=2), host, MapRule(depth, by_cell(top=depth - 1)))
    assert min(plan.scales) > 0.0  # 0.75 ** 2999 underflows; the scale stays positive
    assert notes_with(plan, "effectively do not train")
    assert not notes_with(plan_of(Net(depth=2), host, MapRule(6, by_cell(top=5))), "effectively do not train")
