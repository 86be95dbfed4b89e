"""Progressive unfreezing and wrappers (torch.compile, activation checkpointing) on real training steps."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "dist"))
from ldtrain_common import PLUGIN, expected_decay, expected_mult, make_model, train_steps

import layerdecay
from layerdecay import PlanMismatchError
from layerdecay.training import add_unfrozen_params, check_scheduler, verify

DECAY, WD, LR = 0.5, 0.05, 1e-2
OPTIONS = {"layer_decay": DECAY, "weight_decay": WD, "plugins": [PLUGIN]}


def _group_of(opt, name):
    for g in opt.param_groups:
        if name in g["param_names"]:
            return g
    raise AssertionError(name)


def test_unfreeze_into_existing_groups():
    model = make_model(depth=3)
    model.blocks[1].fc2.requires_grad_(False)  # fc2 shares layer 2 with fc1: its groups already exist
    opt = layerdecay.build_optimizer(model, "adamw", lr=LR, **OPTIONS)
    n_groups = len(opt.param_groups)
    train_steps(model, opt, 2)
    frozen_before = model.blocks[1].fc2.weight.detach().clone()

    model.blocks[1].fc2.requires_grad_(True)
    added = add_unfrozen_params(opt, model, **OPTIONS)
    assert sorted(added) == ["blocks.1.fc2.bias", "blocks.1.fc2.weight"]
    assert len(opt.param_groups) == n_groups
    for name in added:
        g = _group_of(opt, name)
        assert g["lr"] == pytest.approx(LR * expected_mult(name, 3, DECAY), rel=1e-12)
        assert g["weight_decay"] == (WD if expected_decay(name) else 0.0)
        assert g["param_names"][-1] == name or name in g["param_names"]
    verify(opt, model, plan=layerdecay.explain(model, **OPTIONS))
    train_steps(model, opt, 2, start=2)
    assert not torch.equal(frozen_before, model.blocks[1].fc2.weight)
    assert add_unfrozen_params(opt, model, **OPTIONS) == []


def test_verify_warns_about_unfrozen_parameters_until_they_are_added():
    model = make_model(depth=3)
    model.blocks[1].fc2.requires_grad_(False)
    opt = layerdecay.build_optimizer(model, "adamw", lr=LR, **OPTIONS)
    verify(opt, model)  # nothing trainable is left out
    model.blocks[1].fc2.requires_grad_(True)
    with pytest.warns(layerdecay.LayerDecayWarning, match=r"2 trainable parameter\(s\) .* will not train") as caught:
        verify(opt, model)
    assert "blocks.1.fc2.weight" in str(caught[0].message) and caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # adding them is the fix, so that call does not warn about them
        assert sorted(add_unfrozen_params(opt, model, **OPTIONS)) == ["blocks.1.fc2.bias", "blocks.1.fc2.weight"]
        verify(opt, model)


def test_unfreeze_new_layer_follows_the_schedule():
    model = make_model(depth=3)
    for p in model.parameters():
        p.requires_grad_(False)
    model.norm.requires_grad_(True)
    model.head.requires_grad_(True)
    with pytest.warns(layerdecay.LayerDecayWarning, match="layer_decay has no effect"):  # only the top trains yet
        opt = layerdecay.build_optimizer(model, "adamw", lr=LR, **OPTIONS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.8 ** t)
    train_steps(model, opt, 3, scheduler=sched)

    model.blocks[2].requires_grad_(True)
    with pytest.raises(layerdecay.ConfigError, match="scheduler="):
        add_unfrozen_params(opt, model, **OPTIONS)
    added = add_unfrozen_params(opt, model, scheduler=sched, **OPTIONS)
    assert sorted(added) == sorted(n for n, _ in model.blocks[2].named_parameters(prefix="blocks.2"))
    check_scheduler(sched)
    for step in range(3, 6):
        for g in opt.param_groups:
            mult = expected_mult(g["param_names"][0], 3, DECAY)
            assert g["lr"] == pytest.approx(LR * 0.8 ** step * mult, rel=1e-12)
            assert g["weight_decay"] == (WD if expected_decay(g["param_names"][0]) else 0.0)
        train_steps(model, opt, 1, start=step, scheduler=sched)
    assert opt.state[model.blocks[2].fc1.weight]["step"] == 3


def test_unfreeze_with_timm_scheduler_in_lr_scale_mode():
    from timm.scheduler import CosineLRScheduler

    model = make_model(depth=3)
    model.blocks.requires_grad_(False)
    opt = layerdecay.build_optimizer(model, "sgd", lr=LR, scale_mode="lr_scale", **OPTIONS)
    sched = CosineLRScheduler(opt, t_initial=10, t_in_epochs=False)
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    ref = CosineLRScheduler(ref_opt, t_initial=10, t_in_epochs=False)
    train_steps(model, opt, 2, scheduler=sched, timm_sched=True)
    ref.step_update(2)
    model.blocks[0].requires_grad_(True)
    add_unfrozen_params(opt, model, scheduler=sched, **OPTIONS)
    for step in range(2, 5):
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"] * expected_mult(g["param_names"][0], 3,
                                                                                          DECAY), rel=1e-12)
        train_steps(model, opt, 1, start=step, scheduler=sched, timm_sched=True)
        ref.step_update(step + 1)


def _plan_key(plan):
    return [(r.name, r.layer_id, r.lr_mult, r.weight_decay) for r in plan.rows]


@pytest.mark.parametrize("wrapper", ["compile", "checkpoint", "both"])
def test_wrappers_get_the_bare_plan_and_train_identically(wrapper):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    bare = make_model(depth=3)
    wrapped = make_model(depth=3)
    if wrapper in ("checkpoint", "both"):
        apply_activation_checkpointing(wrapped, check_fn=lambda m: type(m).__name__ == "Block")
        assert any("_checkpoint_wrapped_module" in n for n, _ in wrapped.named_parameters())
    if wrapper in ("compile", "both"):
        wrapped = torch.compile(wrapped, backend="eager")
        assert next(iter(wrapped.named_parameters()))[0].startswith("_orig_mod.")
    assert _plan_key(layerdecay.explain(wrapped, **OPTIONS)) == _plan_key(layerdecay.explain(bare, **OPTIONS))
    opts = [layerdecay.build_optimizer(m, "adamw", lr=LR, **OPTIONS) for m in (bare, wrapped)]
    assert [g["param_names"] for g in opts[0].param_groups] == [g["param_names"] for g in opts[1].param_groups]
    for m, o in zip((bare, wrapped), opts, strict=True):
        train_steps(m, o, 3)
        verify(o, m)
    for (n, a), (_, b) in zip(bare.named_parameters(), layerdecay.unwrap(wrapped).named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=n)


def test_verify_names_stale_params():
    model = make_model(depth=2)
    opt = layerdecay.build_optimizer(model, "adamw", lr=LR, **OPTIONS)
    model.head.weight = torch.nn.Parameter(model.head.weight.detach().clone())  # replaced, as sharding does
    with pytest.raises(PlanMismatchError, match=r"stale.*head\.weight"):
        verify(opt, model)


def test_unfreezing_into_an_optimizer_of_stale_tensors_is_refused():
    model = make_model()
    optimizer = layerdecay.build_optimizer(model, "adamw", lr=0.1, plugins=[PLUGIN])
    replaced = make_model()  # same names, other tensors: what sharding after building does
    with pytest.raises(layerdecay.PlanMismatchError, match="stale tensors"):
        layerdecay.add_unfrozen_params(optimizer, replaced, plugins=[PLUGIN])
