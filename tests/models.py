"""Small hand-made models with known structure, and a table reader, shared by the core's tests."""

from __future__ import annotations

import torch
from torch import nn

import layerdecay


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.fc(self.norm(x))


class TinyNet(nn.Module):
    """embed -> N blocks -> norm -> head: the shape every fine-tuning recipe assumes."""

    def __init__(self, depth: int = 4, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(5, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x) + self.pos_embed[:, : x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


class TinyRule:
    """A plugin that owns TinyNet: embed/tokens -> 0, blocks.i -> i+1, the rest -> top."""

    __name__ = "tiny-rule"

    @layerdecay.hookimpl
    def layerdecay_num_layers(self, model, recipe):
        if not isinstance(model.model, TinyNet):
            return None
        return len(model.model.blocks) + 2

    @layerdecay.hookimpl
    def layerdecay_layer_id(self, model, num_layers):
        if not isinstance(model.model, TinyNet):
            return None

        def layer_id(name: str) -> int:
            if name.startswith(("embed", "pos_embed", "cls_token")):
                return 0
            if name.startswith("blocks."):
                return int(name.split(".")[1]) + 1
            return num_layers - 1

        return layer_id


class Cell(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)


class CellNet(nn.Module):
    """patch (3->4) -> 3 cells (4->4) -> head (4->2): the generic fallback gives it 5 layer ids."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(3, 4)
        self.cells = nn.ModuleList(Cell(4) for _ in range(3))
        self.head = nn.Linear(4, 2)


def table_rows(text: str) -> list[list[str]]:
    """The rows of the first plain-text table in ``text`` (after its dashed rule), split on runs of 2+ spaces."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append([c.strip() for c in line.strip().split("  ") if c.strip()])
    return rows
