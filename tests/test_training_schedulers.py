"""Schedulers on layerdecay's groups: decay applied exactly once, absolute values kept in ratio, traps detected.

The reference for every schedule is the same scheduler run by torch/timm on a one-group optimizer at the base
lr; the per-group multiplier is computed from the parameter names (``expected_mult``), not read back.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.optim import lr_scheduler as L

sys.path.insert(0, str(Path(__file__).parent / "dist"))
from ldtrain_common import PLUGIN, expected_decay, expected_mult, make_model, train_steps

import layerdecay
from layerdecay import LayerDecayWarning, PlanMismatchError
from layerdecay.training import check_scheduler, cosine_schedule, scaled, set_lr

timm_scheduler = pytest.importorskip("timm.scheduler")
pytestmark = pytest.mark.filterwarnings("ignore:PlateauLRScheduler is deprecated:FutureWarning")

BASE = 0.1
DECAY = 0.5
DEPTH = 3
STEPS = 7


def build(scale_mode: str = "lr", **kwargs):
    model = make_model(depth=DEPTH)
    opt = layerdecay.build_optimizer(model, "sgd", lr=BASE, layer_decay=DECAY, plugins=[PLUGIN],
                                     scale_mode=scale_mode, **kwargs)
    return model, opt


def reference_optimizer():
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)


def group_mult(group) -> float:
    """The multiplier a group must carry, from its parameters' names (all members agree)."""
    mults = {expected_mult(n, DEPTH, DECAY) for n in group["param_names"]}
    assert len(mults) == 1, group["param_names"]
    return mults.pop()


def assert_lrs(opt, ref_lr: float, *, rel: float = 1e-12) -> None:
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(ref_lr * group_mult(g), rel=rel, abs=1e-15), g["group_name"]


TORCH_SCHEDULERS = {
    "LambdaLR": lambda o, s: L.LambdaLR(o, lambda t: 0.9 ** t),
    "StepLR": lambda o, s: L.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o, s: L.MultiStepLR(o, milestones=[2, 4], gamma=0.3),
    "ExponentialLR": lambda o, s: L.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda o, s: L.CosineAnnealingLR(o, T_max=5),
    "CosineAnnealingWarmRestarts": lambda o, s: L.CosineAnnealingWarmRestarts(o, T_0=3),
    "LinearLR": lambda o, s: L.LinearLR(o, start_factor=0.2, total_iters=4),
    "SequentialLR": lambda o, s: L.SequentialLR(
        o, [L.LinearLR(o, start_factor=0.1, total_iters=2), L.CosineAnnealingLR(o, T_max=4)], milestones=[2]),
    "ChainedScheduler": lambda o, s: L.ChainedScheduler([L.ExponentialLR(o, gamma=0.9), L.StepLR(o, 2, 0.5)]),
    "PolynomialLR": lambda o, s: L.PolynomialLR(o, total_iters=6, power=2.0),
    "OneCycleLR": lambda o, s: L.OneCycleLR(o, max_lr=s(o, 0.2), total_steps=10),
    "CyclicLR": lambda o, s: L.CyclicLR(o, base_lr=s(o, 0.01), max_lr=s(o, 0.2), step_size_up=3,
                                        cycle_momentum=False),
    "ReduceLROnPlateau": lambda o, s: L.ReduceLROnPlateau(o, factor=0.5, patience=0, min_lr=s(o, 0.01)),
}


def _scalar(_opt, value):
    return value


@pytest.mark.parametrize("name", sorted(TORCH_SCHEDULERS))
def test_torch_scheduler_keeps_decay_exactly_once(name):
    model, opt = build()
    sched = TORCH_SCHEDULERS[name](opt, scaled)
    ref_opt = reference_optimizer()
    ref = TORCH_SCHEDULERS[name](ref_opt, _scalar)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerDecayWarning)
        check_scheduler(sched)
    assert_lrs(opt, ref_opt.param_groups[0]["lr"])
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(STEPS):
        train_steps(model, opt, 1, start=step)
        ref_opt.step()
        if name == "ReduceLROnPlateau":
            sched.step(1.0)
            ref.step(1.0)
        else:
            sched.step()
            ref.step()
        assert_lrs(opt, ref_opt.param_groups[0]["lr"])
        check_scheduler(opt)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    if name == "ReduceLROnPlateau":  # the floor was reached, and kept in ratio
        assert ref_opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_cosine_closed_form():
    _, opt = build()
    sched = L.CosineAnnealingLR(opt, T_max=5)
    for t in range(1, 6):
        opt.step()
        sched.step()
        factor = 0.5 * (1 + math.cos(math.pi * t / 5))
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(BASE * factor * group_mult(g), rel=1e-12, abs=1e-15)


def test_cosine_schedule_factor_keeps_relative_floor():
    _, opt = build()
    sched = L.LambdaLR(opt, cosine_schedule(8, warmup_steps=2, warmup_start=0.1, floor=0.05))
    expected = [0.1, 0.55] + [0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(7)]
    for t in range(9):
        assert_lrs(opt, BASE * expected[t])
        opt.step()
        sched.step()
    assert_lrs(opt, BASE * 0.05)  # the floor is 5% of each group's own lr


def _timm_factories():
    tsch = timm_scheduler
    return {
        "CosineLRScheduler": lambda o, floors: tsch.CosineLRScheduler(
            o, t_initial=6, warmup_t=2, lr_min=1e-3 if floors else 0.0, warmup_lr_init=1e-3 if floors else 0.0),
        "StepLRScheduler": lambda o, floors: tsch.StepLRScheduler(
            o, decay_t=2, decay_rate=0.5, warmup_t=1, warmup_lr_init=2e-3 if floors else 0.0),
        "PlateauLRScheduler": lambda o, floors: tsch.PlateauLRScheduler(
            o, decay_rate=0.5, patience_t=0, warmup_t=2, warmup_lr_init=1e-3 if floors else 0.0, mode="min"),
        "create_scheduler_v2": lambda o, floors: tsch.create_scheduler_v2(
            o, sched="cosine", num_epochs=6, warmup_epochs=2, min_lr=1e-3 if floors else 0.0,
            warmup_lr=1e-3 if floors else 0.0)[0],
    }


@pytest.mark.parametrize("scale_mode", ["lr", "lr_scale"])
@pytest.mark.parametrize("name", ["CosineLRScheduler", "StepLRScheduler", "PlateauLRScheduler", "create_scheduler_v2"])
def test_timm_scheduler_keeps_decay_exactly_once(name, scale_mode):
    # lr mode: timm scales each group's own lr, exact when floors are 0.
    # lr_scale mode: timm multiplies lr_scale in after the schedule, exact with floors.
    floors = scale_mode == "lr_scale"
    factory = _timm_factories()[name]
    model, opt = build(scale_mode)
    sched = factory(opt, floors)
    ref_opt = reference_optimizer()
    ref = factory(ref_opt, floors)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerDecayWarning)
        check_scheduler(sched)
    for epoch in range(1, STEPS + 1):
        train_steps(model, opt, 1, start=epoch)
        metric = 1.0 if name == "PlateauLRScheduler" else None
        sched.step(epoch, metric)
        ref.step(epoch, metric)
        assert_lrs(opt, ref_opt.param_groups[0]["lr"])
    if name == "CosineLRScheduler":
        assert ref_opt.param_groups[0]["lr"] != BASE


def test_set_lr_convnext_style_loop():
    # A per-group wd multiplier from a policy: head.weight gets 0.1x weight decay.
    class HeadWd:
        @layerdecay.hookimpl
        def layerdecay_param_policy(self):
            return lambda name, p, m: layerdecay.Decision(wd_mult=0.1) if name == "head.weight" else None

    model = make_model(depth=DEPTH)
    opt = layerdecay.build_optimizer(model, "adamw", lr=BASE, weight_decay=0.05, layer_decay=DECAY,
                                     plugins=[PLUGIN, HeadWd()], scale_mode="lr_scale")
    lr_values = [BASE * 0.5 * (1 + math.cos(math.pi * i / 6)) for i in range(6)]
    wd_values = [0.05 + (0.2 - 0.05) * i / 5 for i in range(6)]
    for it in range(6):
        set_lr(opt, lr_values[it], weight_decay=wd_values[it])
        check_scheduler(opt)
        train_steps(model, opt, 1, start=it)
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(lr_values[it] * group_mult(g), rel=1e-12, abs=1e-15)
            names = g["param_names"]
            decays = {expected_decay(n) for n in names}
            assert len(decays) == 1
            if decays.pop():
                wd_mult = 0.1 if names == ["head.weight"] else 1.0
                assert g["weight_decay"] == pytest.approx(wd_values[it] * wd_mult, rel=1e-12)
            else:
                assert g["weight_decay"] == 0.0


def test_set_lr_records_wd_mult_for_foreign_groups():
    p, q = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([{"params": [p], "weight_decay": 0.05}, {"params": [q], "weight_decay": 0.0}])
    set_lr(opt, 0.3, weight_decay=0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.3]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]


# ----------------------------------------------------------------------------------------- traps


def test_torch_scheduler_on_lr_scale_groups_is_an_error():
    _, opt = build("lr_scale")
    sched = L.LambdaLR(opt, lambda t: 0.9 ** t)
    with pytest.raises(PlanMismatchError, match="ignore 'lr_scale'"):
        check_scheduler(sched)
    # ... because the decay is really lost: every group runs at the same lr.
    opt.step()
    sched.step()
    assert len({g["lr"] for g in opt.param_groups}) == 1
    with pytest.raises(PlanMismatchError, match="decay is lost"):
        check_scheduler(opt)


def test_timm_scheduler_on_multiplied_lr_plus_lr_scale_is_squared():
    _, opt = build("lr")
    for g in opt.param_groups:  # the SimMIM-on-timm pattern: lr already multiplied, lr_scale added
        g["lr_scale"] = g["lr_mult"]
    sched = timm_scheduler.CosineLRScheduler(opt, t_initial=6)
    with pytest.raises(PlanMismatchError, match="twice"):
        check_scheduler(sched)
    sched.step(2)
    ref_opt = reference_optimizer()
    ref = timm_scheduler.CosineLRScheduler(ref_opt, t_initial=6)
    ref.step(2)
    for g in opt.param_groups:  # what actually happens: multiplier squared
        assert g["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"] * group_mult(g) ** 2, rel=1e-12)
    with pytest.raises(PlanMismatchError, match="SQUARED"):
        check_scheduler(opt)


@pytest.mark.parametrize("make", [
    lambda o: L.CosineAnnealingLR(o, T_max=5, eta_min=1e-3),
    lambda o: L.CosineAnnealingWarmRestarts(o, T_0=3, eta_min=1e-3),
    lambda o: L.ReduceLROnPlateau(o, min_lr=1e-3),
    lambda o: timm_scheduler.CosineLRScheduler(o, t_initial=6, lr_min=1e-3),
    lambda o: timm_scheduler.CosineLRScheduler(o, t_initial=6, warmup_t=2, warmup_lr_init=1e-4),
], ids=["eta_min", "warm_restarts_eta_min", "plateau_min_lr", "timm_lr_min", "timm_warmup_lr_init"])
def test_absolute_floor_warns(make):
    _, opt = build("lr")
    with pytest.warns(LayerDecayWarning) as caught:
        check_scheduler(make(opt))
    messages = [str(w.message) for w in caught]
    assert any("flatten" in m or "proportional" in m for m in messages)
    # timm's warm-up starts every group at the same absolute lr, which is also reported as decay lost for now.
    assert all(re.search("flatten|proportional|decay is lost", m) for m in messages)


@pytest.mark.parametrize("make", [
    lambda o: L.OneCycleLR(o, max_lr=0.2, total_steps=10),
    lambda o: L.CyclicLR(o, base_lr=0.01, max_lr=0.2, cycle_momentum=False),
], ids=["OneCycleLR", "CyclicLR"])
def test_scalar_cycle_bounds_lose_decay(make):
    _, opt = build("lr")
    with pytest.raises(PlanMismatchError, match="scaled"):
        check_scheduler(make(opt))


def test_loop_writing_lr_without_multiplier_is_detected():
    _, opt = build("lr")
    for g in opt.param_groups:
        g["lr"] = 0.05
    with pytest.raises(PlanMismatchError, match="decay is lost"):
        check_scheduler(opt)


def test_scaled_values():
    _, opt = build("lr")
    assert scaled(opt, 2.0) == [2.0 * group_mult(g) for g in opt.param_groups]
    _, opt2 = build("lr_scale")
    assert scaled(opt2, 2.0) == [2.0 * group_mult(g) for g in opt2.param_groups]
