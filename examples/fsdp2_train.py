"""FSDP2 (``fully_shard``) with layer decay: shard first, then build the optimizer, then verify.

Run on CPU with two processes::

    torchrun --standalone --nproc_per_node=2 examples/fsdp2_train.py --steps 5

``fully_shard`` replaces every parameter with a DTensor. Param groups built before sharding keep the old
tensors: ``step()`` then updates nothing, without an error. ``layerdecay.training.verify`` names them.
"""

from __future__ import annotations

import argparse
import os

import timm
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

import layerdecay
from layerdecay.training import check_scheduler, verify


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, num_classes=5)


def main(steps: int = 5) -> dict:
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = make_model()
    for block in model.blocks:  # shard each block, then the root
        fully_shard(block)
    fully_shard(model)
    # Build AFTER sharding: the groups then hold the DTensors that FSDP2 trains.
    optimizer = layerdecay.build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    verify(optimizer, model)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    check_scheduler(scheduler)
    g = torch.Generator().manual_seed(rank)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    result = {"rank": rank, "losses": losses, "groups": len(optimizer.param_groups),
              "lrs": [grp["lr"] for grp in optimizer.param_groups],
              "lr_mults": [grp["lr_mult"] for grp in optimizer.param_groups]}
    if owns_group:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    out = main(parser.parse_args().steps)
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)
