"""Resume in a fresh process: ``python resume_worker.py VARIANT CHECKPOINT OUT STEPS``.

Rebuilds model, optimizer and scheduler exactly as the test did, loads the checkpoint, trains STEPS more
and saves the parameters and optimizer state to OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ldtrain_common import PLUGIN, make_model, train_steps

import layerdecay
from layerdecay.training import load_optimizer_state

TOTAL = 8


def build(variant: str, **plan_options):
    model = make_model(depth=3)
    options = {"layer_decay": 0.6, "weight_decay": 0.05} | plan_options
    if variant == "torch":
        opt = layerdecay.build_optimizer(model, "adamw", lr=1e-2, plugins=[PLUGIN], **options)
        from layerdecay.training import cosine_schedule

        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_schedule(TOTAL, warmup_steps=2, floor=0.1))
    elif variant == "timm":
        from timm.scheduler import CosineLRScheduler

        opt = layerdecay.build_optimizer(model, "adamw", lr=1e-2, plugins=[PLUGIN], scale_mode="lr_scale",
                                         **options)
        sched = CosineLRScheduler(opt, t_initial=TOTAL, warmup_t=2, warmup_lr_init=1e-4, lr_min=1e-4,
                                  t_in_epochs=False)
    else:
        raise SystemExit(f"unknown variant {variant}")
    return model, opt, sched


def main(variant: str, checkpoint: str, out: str, steps: int) -> None:
    model, opt, sched = build(variant)
    state = torch.load(checkpoint, weights_only=False)
    model.load_state_dict(state["model"])
    load_optimizer_state(opt, state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    train_steps(model, opt, steps, start=state["step"], scheduler=sched, timm_sched=variant == "timm")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
