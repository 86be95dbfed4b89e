"""A tiny model and a plugin with a known layer layout, shared by the training tests and their subprocesses.

Layer ids: ``stem`` -> 0, ``blocks.i`` -> i + 1, everything else (final norm, head) -> top = depth + 1.
With ``layer_decay=d`` a parameter's lr multiplier is therefore ``d ** (top - id)``, computed here by name,
independently of layerdecay.
"""

from __future__ import annotations

import torch
from torch import nn

import layerdecay


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


class TinyNet(nn.Module):
    def __init__(self, depth: int = 3, dim: int = 8, inputs: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(inputs, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class TinyPlugin:
    """Claims TinyNet: stem 0, blocks.i i+1, the rest top."""

    @layerdecay.hookimpl
    def layerdecay_num_layers(self, model):
        if type(model.model).__name__ != "TinyNet":
            return None
        return len(model.module("blocks")) + 2

    @layerdecay.hookimpl
    def layerdecay_layer_id(self, model, num_layers):
        if type(model.model).__name__ != "TinyNet":
            return None
        return lambda name: expected_layer_id(name, num_layers - 2)


PLUGIN = TinyPlugin()


def expected_layer_id(name: str, depth: int) -> int:
    if name.startswith("stem."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def expected_mult(name: str, depth: int, decay: float) -> float:
    return decay ** (depth + 1 - expected_layer_id(name, depth))


def expected_decay(name: str) -> bool:
    """Weight decay by meaning, written out for TinyNet: only Linear weights decay."""
    return name.endswith(".weight") and "norm" not in name.split(".")[-2]


def make_model(seed: int = 0, **kwargs) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**kwargs)


def batch(step: int, n: int = 4, inputs: int = 6, classes: int = 3, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + 17 * step + 7919 * rank)
    return torch.randn(n, inputs, generator=g), torch.randint(0, classes, (n,), generator=g)


def train_steps(model, optimizer, steps: int, *, start: int = 0, scheduler=None, timm_sched: bool = False) -> None:
    for step in range(start, start + steps):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            if timm_sched:
                scheduler.step_update(step + 1)
            else:
                scheduler.step()
