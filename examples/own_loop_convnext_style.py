"""A ConvNeXt/BEiT/MAE-style training loop: per-iteration lr and weight-decay schedules, ``lr_scale`` groups.

    python examples/own_loop_convnext_style.py --steps 6

Those loops set ``group["lr"] = lr_schedule[it] * group["lr_scale"]`` every iteration and give weight decay
only to groups that had it. ``set_lr`` does exactly that, and also keeps per-group weight-decay multipliers.
Do not add a torch scheduler on top: it would ignore ``lr_scale`` (``check_scheduler`` raises).
"""

from __future__ import annotations

import argparse
import math

import timm
import torch

import layerdecay
from layerdecay.training import check_scheduler, set_lr


def cosine_values(base: float, final: float, total: int, warmup: int = 0, start: float = 0.0) -> list[float]:
    """One value per iteration: linear warmup from ``start``, then cosine from ``base`` to ``final``."""
    values = [start + (base - start) * i / warmup for i in range(warmup)]
    span = total - warmup
    values += [final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / span)) for i in range(span)]
    return values


def main(steps: int = 6) -> dict:
    torch.manual_seed(0)
    # A ConvNeXt-atto shrunk for CPU; any timm ConvNeXt works the same way.
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=5, depths=(1, 1, 2, 1),
                              dims=(8, 16, 32, 64))
    optimizer = layerdecay.build_optimizer(model, "adamw", lr=4e-3, weight_decay=0.05, layer_decay=0.8,
                                           scale_mode="lr_scale")
    lr_schedule = cosine_values(4e-3, 1e-5, steps, warmup=2, start=1e-5)
    wd_schedule = cosine_values(0.05, 0.2, steps)  # weight decay rises, as in ConvNeXt's --weight_decay_end
    history = []
    for it in range(steps):
        set_lr(optimizer, lr_schedule[it], weight_decay=wd_schedule[it])
        if it == 0:
            check_scheduler(optimizer)  # every group's lr is one value times its lr_scale
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({
            "lr": lr_schedule[it], "wd": wd_schedule[it], "loss": loss.item(),
            "groups": [(g["lr"], g["lr_scale"], g["weight_decay"], g["wd_mult"], g["layer_id"])
                       for g in optimizer.param_groups],
        })
    return {"history": history, "num_groups": len(optimizer.param_groups)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    result = main(parser.parse_args().steps)
    for h in result["history"]:
        print(f"lr {h['lr']:.2e}  wd {h['wd']:.3f}  loss {h['loss']:.4f}")
