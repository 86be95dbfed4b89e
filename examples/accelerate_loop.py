"""Accelerate: build the optimizer before ``prepare`` and step the prepared scheduler.

    python examples/accelerate_loop.py --steps 3

``prepare`` wraps the optimizer but keeps its param groups (and their ``lr_mult``/``group_name`` keys).
Build the groups from the model you pass to ``prepare`` (layerdecay sees through the DDP wrapper either way).
"""

from __future__ import annotations

import argparse

import timm
import torch
from accelerate import Accelerator

import layerdecay
from layerdecay.training import check_scheduler


def factor(step: int) -> float:
    return 0.9 ** step


def main(steps: int = 3) -> dict:
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              embed_dim=32, num_heads=2, num_classes=5)
    optimizer = layerdecay.build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    check_scheduler(scheduler)
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 5, (16,),
                                                                                                 generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    done = 0
    while done < steps:
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            done += 1
            if done == steps:
                break
    check_scheduler(optimizer)
    groups = optimizer.param_groups
    return {"lrs": [g["lr"] for g in groups], "lr_mults": [g["lr_mult"] for g in groups], "steps": done,
            "base_lr": 1e-3}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    print(main(parser.parse_args().steps))
