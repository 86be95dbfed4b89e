"""The plan's invariants: coverage, frozen and tied parameters, groups, wrappers, meta, no mutation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

import layerdecay
from tests.models import TinyNet


class DDPLike(nn.Module):
    """Holds the model as ``module``, as DistributedDataParallel and DataParallel do."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class FSDPLike(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._fsdp_wrapped_module = module


def plan_signature(plan: layerdecay.Plan) -> list[tuple]:
    return [(r.name, r.shape, r.layer_id, r.lr_mult, r.weight_decay, r.reason, r.group) for r in plan.rows]


def test_every_trainable_parameter_in_exactly_one_group(tiny, tiny_host):
    groups = layerdecay.param_groups(tiny, lr=0.1, host=tiny_host, named=False)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in tiny.parameters()}
    assert all(g["params"] for g in groups)


def test_frozen_parameters_in_no_group_and_scales_unchanged(tiny, tiny_host):
    full = layerdecay.explain(tiny, host=tiny_host)
    for p in list(tiny.embed.parameters()) + list(tiny.blocks[0].parameters()):
        p.requires_grad_(False)
    frozen = layerdecay.explain(tiny, host=tiny_host)
    assert frozen.num_layers == full.num_layers
    assert not any(r.name.startswith(("embed.", "blocks.0.")) for r in frozen.rows)
    full_mult = {r.name: r.lr_mult for r in full.rows}
    assert all(full_mult[r.name] == r.lr_mult for r in frozen.rows)


def test_frozen_parameters_do_not_shift_fallback_layers(bare_host):
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    with pytest.warns(layerdecay.LayerDecayWarning):
        full = layerdecay.explain(model, host=bare_host)
    model.patch_embed.requires_grad_(False)
    model.blocks[0].requires_grad_(False)
    with pytest.warns(layerdecay.LayerDecayWarning):
        frozen = layerdecay.explain(model, host=bare_host)
    full_mult = {r.name: r.lr_mult for r in full.rows}
    assert frozen.num_layers == full.num_layers
    assert all(full_mult[r.name] == r.lr_mult for r in frozen.rows)


def test_tied_parameters_appear_once(tiny_host):
    model = TinyNet(classes=8)
    model.head.weight = model.embed.weight if model.embed.weight.shape == model.head.weight.shape else None
    model.head = nn.Linear(8, 8)
    model.blocks[1].fc.weight = model.blocks[0].fc.weight
    plan = layerdecay.explain(model, host=tiny_host)
    names = [r.name for r in plan.rows]
    assert "blocks.0.fc.weight" in names and "blocks.1.fc.weight" not in names
    groups = layerdecay.param_groups(model, lr=0.1, host=tiny_host, named=False)
    torch.optim.AdamW(groups)  # torch rejects a parameter that appears twice


def test_no_empty_groups_and_minimal_count(tiny, tiny_host):
    plan = layerdecay.explain(tiny, host=tiny_host)
    assert all(g.rows for g in plan.groups)
    assert len(plan.groups) == len({(r.lr_mult, r.weight_decay) for r in plan.rows})


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda m: DDPLike(m), id="module"),
        pytest.param(lambda m: torch.compile(m), id="compile"),
        pytest.param(lambda m: FSDPLike(m), id="fsdp1"),
        pytest.param(lambda m: checkpoint_wrapper(m), id="checkpoint"),
        pytest.param(lambda m: DDPLike(torch.compile(FSDPLike(m))), id="nested"),
        pytest.param(lambda m: torch.compile(DDPLike(checkpoint_wrapper(m))), id="nested-other-order"),
    ],
)
def test_wrapped_model_gets_the_bare_plan(tiny, tiny_host, wrap):
    bare = layerdecay.explain(tiny, host=tiny_host)
    wrapped_model = wrap(tiny)
    assert [n for n, _ in wrapped_model.named_children()] != [n for n, _ in tiny.named_children()]
    wrapped = layerdecay.explain(wrapped_model, host=tiny_host)
    assert plan_signature(wrapped) == plan_signature(bare)


def test_mid_path_wrappers_are_stripped(tiny, tiny_host):
    bare = layerdecay.explain(tiny, host=tiny_host)
    for i, block in enumerate(tiny.blocks):
        tiny.blocks[i] = FSDPLike(checkpoint_wrapper(block)) if i % 2 else checkpoint_wrapper(FSDPLike(block))
    names = [n for n, _ in tiny.named_parameters()]
    assert any("._fsdp_wrapped_module." in n for n in names)
    assert plan_signature(layerdecay.explain(FSDPLike(tiny), host=tiny_host)) == plan_signature(bare)


def test_real_ddp_wrapper(tiny, tiny_host, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(tiny)
        assert plan_signature(layerdecay.explain(ddp, host=tiny_host)) == plan_signature(
            layerdecay.explain(tiny, host=tiny_host)
        )
    finally:
        dist.destroy_process_group()


def test_no_weight_decay_found_through_wrappers(bare_host):
    class WithList(TinyNet):
        def no_weight_decay(self):
            return {"embed.weight"}

    model = WithList()
    with pytest.warns(layerdecay.LayerDecayWarning):
        plan = layerdecay.explain(DDPLike(torch.compile(model)), host=bare_host)
    assert plan.row("embed.weight").weight_decay == 0.0
    assert plan.row("embed.weight").reason == "model.no_weight_decay()"


def test_meta_device_model(tiny_host):
    with torch.device("meta"):
        model = TinyNet(depth=3)
    plan = layerdecay.explain(model, host=tiny_host)
    assert plan.num_layers == 5
    assert all(p.is_meta for p in plan.parameters)


def test_model_is_never_mutated(tiny, tiny_host):
    snapshot = copy.deepcopy(tiny.state_dict())
    flags = {n: p.requires_grad for n, p in tiny.named_parameters()}
    ids = {n: id(p) for n, p in tiny.named_parameters()}
    tiny.blocks[1].requires_grad_(False)
    flags = {n: p.requires_grad for n, p in tiny.named_parameters()}
    layerdecay.explain(tiny, host=tiny_host)
    layerdecay.param_groups(tiny, lr=0.1, host=tiny_host)
    layerdecay.build_optimizer(tiny, "adamw", lr=0.1, host=tiny_host)
    assert flags == {n: p.requires_grad for n, p in tiny.named_parameters()}
    assert ids == {n: id(p) for n, p in tiny.named_parameters()}
    assert all(torch.equal(snapshot[k], v) for k, v in tiny.state_dict().items())


def test_strip_wrapper_prefixes_on_text():
    strip = layerdecay.strip_wrapper_prefixes
    assert strip("module._orig_mod.blocks.0._fsdp_wrapped_module.fc.weight") == "blocks.0.fc.weight"
    assert strip("_checkpoint_wrapped_module.module.head.bias") == "head.bias"
    assert strip("encoder.module.weight") == "encoder.module.weight"  # a real attribute called module


def test_a_chain_deeper_than_the_recursion_limit_is_walked():
    import sys

    depth = sys.getrecursionlimit() + 200
    root = inner = nn.Sequential()
    for _ in range(depth):
        child = nn.Sequential()
        inner.add_module("0", child)
        inner = child
    inner.add_module("0", nn.Linear(2, 2))
    view = layerdecay.ModelView(root)
    prefix = "0." * (depth + 1)
    assert view.names == (prefix + "weight", prefix + "bias")
    assert len(view.modules) == depth + 2 and view.span(prefix[:-1]) == range(2)


def test_a_module_tree_with_a_cycle_lists_each_module_once():
    root = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 3)))
    root[1].add_module("back", root)  # the root is its own grandchild
    view = layerdecay.ModelView(root)
    assert list(view.modules) == [n for n, _ in root.named_modules()]
    assert list(view.names) == [n for n, _ in root.named_parameters()]


class _AllEqual(nn.Linear):
    """Modules that call every module of their class equal and hash alike."""

    def __eq__(self, other):
        return isinstance(other, _AllEqual)

    def __hash__(self):
        return 0


class _Unhashable(nn.Linear):
    def __eq__(self, other):  # defining __eq__ alone leaves the class unhashable
        return self is other


@pytest.mark.parametrize("kind", [_AllEqual, _Unhashable])
def test_modules_are_told_apart_by_identity_whatever_their_equality_or_hash(kind):
    """(torch's own ``named_modules()`` would merge the first kind's modules and fail on the second's.)"""
    view = layerdecay.ModelView(nn.Sequential(kind(2, 2), kind(3, 3)))
    assert list(view.modules) == ["", "0", "1"]
    assert view.names == ("0.weight", "0.bias", "1.weight", "1.bias")
    shared = kind(2, 2)
    view = layerdecay.ModelView(nn.Sequential(kind(2, 2), kind(2, 2), nn.Sequential(shared), shared))
    assert list(view.modules) == ["", "0", "1", "2", "2.0"]  # the shared one where first seen
    assert view.names == ("0.weight", "0.bias", "1.weight", "1.bias", "2.0.weight", "2.0.bias")


def _torch_listing(model: nn.Module) -> tuple[list[str], list[str]]:
    return [n for n, _ in model.named_modules()], [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("held_elsewhere", [False, True], ids=["fresh", "held-elsewhere"])
def test_sharing_is_found_however_often_the_model_is_referenced(held_elsewhere):
    """The walk tells shared modules and parameters apart by how often they are held before it compares
    identities: a shared module without parameters, a tied parameter and a module shared with its
    parameters are each listed once, as torch lists them, whether or not the model is also referenced
    from elsewhere (an optimizer, a user's lists), and an unshared model lists everything."""
    act = nn.GELU()
    shared_bare = nn.Sequential(nn.Linear(2, 2), act, nn.Linear(2, 2), act)
    tied = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    tied[1].weight = tied[0].weight
    block = nn.Linear(2, 2)
    shared_block = nn.Sequential(block, nn.ReLU(), block)
    unshared = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Sequential(nn.Linear(2, 3), nn.Dropout()))
    models = (shared_bare, tied, shared_block, unshared)
    # References from elsewhere, alive over the whole test, as an optimizer's would be.
    _elsewhere = [(list(m.modules()), list(m.parameters())) for m in models] if held_elsewhere else []
    for model in models:
        view = layerdecay.ModelView(model)
        assert (list(view.modules), list(view.names)) == _torch_listing(model)
        assert len(view.module_types) == len(view.modules)
    assert "3" not in layerdecay.ModelView(shared_bare).modules
    assert layerdecay.ModelView(tied).names == ("0.weight", "0.bias", "1.bias")


def test_planning_leaves_no_cyclic_garbage(tiny, tiny_host):
    """Everything a plan builds is freed by reference counting, so planning a large model in a loop never
    hands work (or memory) to the cyclic collector."""
    import gc

    layerdecay.build_optimizer(tiny, "adamw", lr=0.1, host=tiny_host)
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            layerdecay.build_optimizer(tiny, "adamw", lr=0.1, host=tiny_host)
            layerdecay.explain(tiny, host=tiny_host).rows  # noqa: B018  (the lazy rows too)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_the_collector_is_paused_over_each_call_and_resumed_after(tiny, tiny_host):
    """Planning and building run as one burst without cyclic collections; the collector's state comes back
    as it was, also when the call fails, and a paused collector stays paused."""
    import gc

    seen = []

    class Probe:  # asked while planning
        @layerdecay.hookimpl
        def layerdecay_lr_scale(self, num_layers):
            seen.append(gc.isenabled())
            return [1.0] * num_layers

    class ProbedSGD(torch.optim.SGD):  # built after planning, in the same call
        def __init__(self, params, **kwargs):
            seen.append(gc.isenabled())
            super().__init__(params, **kwargs)

    class Broken:
        @layerdecay.hookimpl
        def layerdecay_lr_scale(self, num_layers):
            raise RuntimeError("boom")

    assert gc.isenabled()
    layerdecay.param_groups(tiny, lr=0.1, host=tiny_host, plugins=[Probe()])
    layerdecay.build_optimizer(tiny, ProbedSGD, lr=0.1, host=tiny_host, plugins=[Probe()])
    assert seen == [False, False, False] and gc.isenabled()
    with pytest.raises(layerdecay.PluginError, match="boom"):
        layerdecay.build_optimizer(tiny, "sgd", lr=0.1, host=tiny_host, plugins=[Broken()])
    assert gc.isenabled()
    gc.disable()
    try:
        layerdecay.param_groups(tiny, lr=0.1, host=tiny_host)
        assert not gc.isenabled()
    finally:
        gc.enable()
