"""Resume: bit-for-bit identical to the uninterrupted run (fresh process), and plan mismatches named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

DIST = Path(__file__).parent / "dist"
sys.path.insert(0, str(DIST))
from ldtrain_common import PLUGIN, expected_mult, make_model, train_steps  # noqa: E402
from resume_worker import TOTAL, build  # noqa: E402

import layerdecay  # noqa: E402
from layerdecay import PlanMismatchError  # noqa: E402
from layerdecay.training import load_optimizer_state, verify  # noqa: E402

HALF = TOTAL // 2


def _assert_same_optimizer_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for key, value in a["state"][k].items():
            assert torch.equal(value, b["state"][k][key]), (k, key)


@pytest.mark.parametrize("variant", ["torch", "timm"])
def test_resume_in_fresh_process_is_bitwise_identical(variant, tmp_path):
    is_timm = variant == "timm"
    model, opt, sched = build(variant)
    train_steps(model, opt, TOTAL, scheduler=sched, timm_sched=is_timm)

    model2, opt2, sched2 = build(variant)
    train_steps(model2, opt2, HALF, scheduler=sched2, timm_sched=is_timm)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model2.state_dict(), "optimizer": opt2.state_dict(), "scheduler": sched2.state_dict(),
                "step": HALF}, ckpt)
    out = tmp_path / "out.pt"
    subprocess.run([sys.executable, str(DIST / "resume_worker.py"), variant, str(ckpt), str(out), str(TOTAL - HALF)],
                   check=True, timeout=120)
    resumed = torch.load(out, weights_only=False)
    for name, value in model.state_dict().items():
        assert torch.equal(value, resumed["model"][name]), name
    _assert_same_optimizer_state(opt.state_dict(), resumed["optimizer"])
    # the groups really trained at their decayed lrs: the lowest layer moved less than the head
    fresh = make_model(depth=3).state_dict()
    assert not torch.equal(fresh["stem.weight"], resumed["model"]["stem.weight"])


def _trained_state(**plan_options):
    model, opt, sched = build("torch", **plan_options)
    train_steps(model, opt, 3, scheduler=sched)
    return opt.state_dict(), opt


def test_other_recipe_is_named():
    saved, _ = _trained_state()
    _, opt, _ = build("torch", layer_decay=0.9)
    with pytest.raises(PlanMismatchError, match=r"group changed.*stem\.weight: lr_mult saved"):
        load_optimizer_state(opt, saved)


def test_newly_frozen_param_is_named():
    saved, _ = _trained_state()
    model = make_model(depth=3)
    model.blocks[0].fc1.weight.requires_grad_(False)
    opt = layerdecay.build_optimizer(model, "adamw", lr=1e-2, layer_decay=0.6, plugins=[PLUGIN])
    with pytest.raises(PlanMismatchError, match=r"no longer has.*blocks\.0\.fc1\.weight"):
        load_optimizer_state(opt, saved)


def _model_with_extra():
    model = make_model(depth=3)
    model.extra = torch.nn.Parameter(torch.full((3, 3), 0.5))
    return model


def test_added_param_is_named_and_remap_moves_state_by_name():
    saved, old_opt = _trained_state()
    model = _model_with_extra()
    opt = layerdecay.build_optimizer(model, "adamw", lr=1e-2, layer_decay=0.6, weight_decay=0.05, plugins=[PLUGIN])
    with pytest.raises(PlanMismatchError, match=r"not in the saved state.*extra"):
        load_optimizer_state(opt, saved)

    load_optimizer_state(opt, saved, remap=True)
    old = {n: st for g in old_opt.param_groups for n, p in zip(g["param_names"], g["params"], strict=True)
           if (st := old_opt.state[p])}
    schedule_value = old_opt.param_groups[0]["lr"] / old_opt.param_groups[0]["lr_mult"]
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(schedule_value * expected_mult(g["param_names"][0], 3, 0.6), rel=1e-12)
        for name, p in zip(g["param_names"], g["params"], strict=True):
            if name == "extra":
                assert not opt.state[p]
                continue
            for key, value in old[name].items():
                assert torch.equal(opt.state[p][key], value), (name, key)
    verify(opt, model)
    train_steps(model, opt, 1, start=3)
    assert opt.state[model.stem.weight]["step"] == 4  # 3 saved steps + 1


def test_remap_under_another_decay_keeps_moments_and_new_ratios():
    saved, old_opt = _trained_state()
    model, opt, _ = build("torch", layer_decay=0.9)
    load_optimizer_state(opt, saved, remap=True)
    old = {n: old_opt.state[p] for g in old_opt.param_groups for n, p in zip(g["param_names"], g["params"],
                                                                             strict=True)}
    for g in opt.param_groups:
        assert g["lr_mult"] == pytest.approx(expected_mult(g["param_names"][0], 3, 0.9), rel=1e-12)
        for name, p in zip(g["param_names"], g["params"], strict=True):
            assert torch.equal(opt.state[p]["exp_avg"], old[name]["exp_avg"])
    verify(opt, model)
    train_steps(model, opt, 1, start=3)
    assert opt.state[model.head.weight]["step"] == 4


def test_positional_load_would_misassign_but_verify_catches_it():
    # Same group sizes, other order of names: torch's load_state_dict takes the saved names silently.
    saved, _ = _trained_state()
    for g in saved["param_groups"]:
        g["param_names"] = list(reversed(g["param_names"]))
    model, opt, _ = build("torch")
    with pytest.raises(PlanMismatchError, match="another order|group changed"):
        load_optimizer_state(opt, saved)
    opt.load_state_dict(saved)
    with pytest.raises(PlanMismatchError, match="do not match the tensors"):
        verify(opt, model)


def test_state_without_names_is_refused():
    saved, _ = _trained_state()
    for g in saved["param_groups"]:
        del g["param_names"]
    _, opt, _ = build("torch")
    with pytest.raises(PlanMismatchError, match="param_names"):
        load_optimizer_state(opt, saved)
