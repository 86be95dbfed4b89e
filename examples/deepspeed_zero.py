"""DeepSpeed ZeRO-1/2 with layer decay, on CPU (gloo), compared with plain PyTorch.

    DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node=2 examples/deepspeed_zero.py --stage 2 --steps 3

Pass layerdecay's groups with ``named=False`` (ZeRO flattens ``params`` and wants bare tensors) to a client
optimizer. layerdecay never emits an empty group, so DeepSpeed's dropping of empty groups cannot shift the
groups under the scheduler. ``gradient_clipping: 0`` keeps the update identical to the PyTorch reference.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
from torch import nn

import layerdecay
from layerdecay.training import check_scheduler


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(6, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.GELU()) for _ in range(3))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def data(step: int, rank: int):
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)


def factor(step: int) -> float:
    return 0.8 ** step


OPTIONS = {"weight_decay": 0.05, "layer_decay": 0.6}


def run_deepspeed(stage: int, steps: int) -> tuple[dict, list[dict]]:
    import deepspeed

    model = Net()
    groups = layerdecay.param_groups(model, lr=1e-2, named=False, **OPTIONS)
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    check_scheduler(scheduler)
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 0,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                      config=config)
    rank = dist.get_rank()
    for s in range(steps):
        x, y = data(s, rank)
        loss = nn.functional.cross_entropy(engine(x), y)
        engine.backward(loss)
        engine.step()
    check_scheduler(ds_optimizer)
    return {n: p.detach().clone() for n, p in engine.module.named_parameters()}, [dict(g) for g in
                                                                                   ds_optimizer.param_groups]


def run_reference(steps: int, world: int) -> dict:
    model = Net()
    optimizer = layerdecay.build_optimizer(model, "adamw", lr=1e-2, **OPTIONS)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    for s in range(steps):
        xs, ys = zip(*(data(s, r) for r in range(world)), strict=True)
        loss = nn.functional.cross_entropy(model(torch.cat(xs)), torch.cat(ys))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def main(stages=(1, 2), steps: int = 3) -> dict:
    result = {}
    for stage in stages:
        params, groups = run_deepspeed(stage, steps)
        ref = run_reference(steps, dist.get_world_size())
        result[f"zero{stage}"] = {
            "max_diff": max((params[n] - ref[n]).abs().max().item() for n in ref),
            "groups": len(groups),
            "planned_groups": len(layerdecay.explain(Net(), **OPTIONS).groups),
            "lrs": [g["lr"] for g in groups], "lr_mults": [g["lr_mult"] for g in groups],
        }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, action="append")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    out = main(tuple(args.stage or (1, 2)), args.steps)
    if dist.get_rank() == 0:
        print(json.dumps(out))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(out, f)
    dist.barrier()
