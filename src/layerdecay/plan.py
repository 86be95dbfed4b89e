"""The Plan: one row per trainable parameter. Everything else (param groups, the optimizer, the table,
JSON, the CLI) reads it; nothing is computed twice."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, NamedTuple

import torch

__all__ = ["GroupSpec", "LayerSummary", "Plan", "PlanColumns", "PlanRow", "ScaleMode"]

ScaleMode = Literal["lr", "lr_scale"]
SCALE_MODES: tuple[str, ...] = ("lr", "lr_scale")


class PlanRow(NamedTuple):
    """What the plan decided for one trainable parameter.

    Attributes:
        name: Normalized name (wrapper prefixes removed).
        shape: Full shape (the global one for sharded tensors).
        numel: Number of elements.
        layer_id: Layer id, ``0 .. num_layers-1``.
        lr_mult: Learning-rate multiplier: the layer's scale times any ``lr_mult`` pattern.
        weight_decay: The weight decay this parameter gets (0.0 when excluded from decay).
        reason: Why weight decay is on or off.
        group: Name of the param group holding it ('' when the parameter is excluded).
        layer_by: The plugin that assigned the layer id.
        decay_by: The plugin (or option) whose rule decided the weight decay.
        excluded: True when a rule left the parameter out of the optimizer.
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    layer_id: int
    lr_mult: float
    weight_decay: float
    reason: str
    group: str
    layer_by: str
    decay_by: str
    excluded: bool = False


class GroupSpec(NamedTuple):
    """One param group of the plan: rows with equal hyperparameters, merged."""

    name: str
    layer_ids: tuple[int, ...]
    lr_mult: float
    weight_decay: float
    rows: tuple[int, ...]


class LayerSummary(NamedTuple):
    """Per-layer totals, for tables and plots."""

    layer_id: int
    scale: float
    tensors: int
    numel: int
    decay_numel: int
    no_decay_numel: int
    examples: tuple[str, ...]


class PlanColumns(NamedTuple):
    """The plan's per-parameter decisions, one list per field, aligned with ``Plan.parameters``.

    The planner fills these in its loop; :attr:`Plan.rows` turns them into :class:`PlanRow` objects only
    when someone reads them, so building an optimizer never pays for rows nobody looks at.
    """

    names: list[str]
    layer_ids: list[int]
    lr_mults: list[float]
    weight_decays: list[float]
    reasons: list[str]
    decay_by: list[str]
    excluded: list[bool]
    layer_by: str


@dataclass(frozen=True, eq=False)
class Plan:
    """The result of planning a model: rows, layers, groups and warnings.

    Attributes:
        rows: One :class:`PlanRow` per trainable parameter, in model order (built on first access).
        num_layers: Number of layer ids.
        scales: The learning-rate multiplier of each layer id.
        layer_decay: The decay factor used.
        weight_decay: The base weight decay.
        recipe: The recipe asked for (None = the owner's default).
        owner: The plugin that claimed the model (answered ``layerdecay_num_layers``), or None.
        fallback: How the generic fallback found the layers, when it was used.
        warnings: Everything worth a second look; also issued as Python warnings.
        groups: The param groups, in their deterministic order.
        parameters: The tensors, aligned with ``rows``.
        shapes: The real shapes, where a tensor shows another (FSDP1 flat views); None when they agree.
    """

    num_layers: int
    scales: tuple[float, ...]
    layer_decay: float
    weight_decay: float
    recipe: str | None
    owner: str | None
    fallback: str | None
    warnings: tuple[str, ...]
    groups: tuple[GroupSpec, ...]
    parameters: tuple[torch.Tensor, ...] = field(repr=False)
    columns: PlanColumns = field(repr=False)
    shapes: tuple[torch.Size, ...] | None = field(default=None, repr=False)

    @cached_property
    def rows(self) -> tuple[PlanRow, ...]:
        c = self.columns
        group_of = [""] * len(c.names)
        for spec in self.groups:
            for i in spec.rows:
                group_of[i] = spec.name
        if self.shapes is None:
            shapes = [tuple(p.shape) for p in self.parameters]
            numels = [p.numel() for p in self.parameters]
        else:  # real shapes behind flat views (FSDP1)
            shapes = [tuple(s) for s in self.shapes]
            numels = [s.numel() for s in self.shapes]
        return tuple(
            map(
                PlanRow._make,
                zip(c.names, shapes, numels, c.layer_ids, c.lr_mults, c.weight_decays, c.reasons, group_of,
                    [c.layer_by] * len(c.names), c.decay_by, c.excluded, strict=True),
            )
        )

    @cached_property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.columns.names)}

    def __len__(self) -> int:
        return len(self.columns.names)

    def __iter__(self) -> Iterator[PlanRow]:
        return iter(self.rows)

    def row(self, name: str) -> PlanRow:
        """The row of the parameter called ``name`` (normalized)."""
        return self.rows[self._index[name]]

    def param_groups(self, lr: float, *, scale_mode: ScaleMode = "lr", named: bool = True) -> list[dict[str, Any]]:
        """Param groups for any ``torch.optim`` optimizer.

        Args:
            lr: Base learning rate (that of the top layer).
            scale_mode: ``"lr"``: each group's ``lr`` is ``lr * lr_mult``, so every torch and timm
                scheduler keeps the ratios. ``"lr_scale"``: ``lr`` stays at the base value and the group
                carries ``lr_scale``, for training loops that multiply it in themselves (ConvNeXt, BEiT,
                MAE) and for timm's schedulers, which apply it.
            named: Give ``params`` as ``(name, tensor)`` pairs, so the names reach the optimizer's state
                dict (torch >= 2.6). False for consumers that want bare tensors.

        Each group also records ``wd_mult`` (its weight decay over the base one, 0.0 for no-decay groups) so
        a weight-decay schedule can rescale it later (:func:`layerdecay.training.set_lr`).
        """
        groups = []
        names, params = self.columns.names, self.parameters
        for spec in self.groups:
            if named:
                members: list[Any] = [(names[i], params[i]) for i in spec.rows]
            else:
                members = [params[i] for i in spec.rows]
            group: dict[str, Any] = {
                "params": members,
                "lr": lr * spec.lr_mult if scale_mode == "lr" else lr,
                "weight_decay": spec.weight_decay,
                "layer_id": spec.layer_ids[0],
                "lr_mult": spec.lr_mult,
                "wd_mult": spec.weight_decay / self.weight_decay if self.weight_decay else 0.0,
                "group_name": spec.name,
            }
            if scale_mode == "lr_scale":
                group["lr_scale"] = spec.lr_mult
            groups.append(group)
        return groups

    def layers(self) -> list[LayerSummary]:
        """Totals per layer id, empty layers included (they show gaps in a recipe)."""
        tensors = [0] * self.num_layers
        numel = [0] * self.num_layers
        decay = [0] * self.num_layers
        examples: list[list[str]] = [[] for _ in range(self.num_layers)]
        for r in self.rows:
            if r.excluded:
                continue
            lid = r.layer_id
            tensors[lid] += 1
            numel[lid] += r.numel
            if r.weight_decay:
                decay[lid] += r.numel
            if len(examples[lid]) < 3:
                examples[lid].append(r.name)
        return [
            LayerSummary(i, self.scales[i], tensors[i], numel[i], decay[i], numel[i] - decay[i], tuple(examples[i]))
            for i in range(self.num_layers)
        ]

    def to_dict(self) -> dict[str, Any]:
        """Everything in the plan as plain data (what :meth:`to_json` writes)."""
        names = self.columns.names
        return {
            "num_layers": self.num_layers,
            "layer_decay": self.layer_decay,
            "weight_decay": self.weight_decay,
            "recipe": self.recipe,
            "owner": self.owner,
            "fallback": self.fallback,
            "scales": list(self.scales),
            "warnings": list(self.warnings),
            "layers": [s._asdict() | {"examples": list(s.examples)} for s in self.layers()],
            "groups": [
                {"name": g.name, "layer_ids": list(g.layer_ids), "lr_mult": g.lr_mult,
                 "weight_decay": g.weight_decay, "params": [names[i] for i in g.rows]}
                for g in self.groups
            ],
            "params": [r._asdict() | {"shape": list(r.shape)} for r in self.rows],
        }

    def to_json(self, **kwargs: Any) -> str:
        """The plan as JSON; keyword arguments go to :func:`json.dumps` (e.g. ``indent=2``)."""
        return json.dumps(self.to_dict(), **kwargs)

    def table(self, *, lr: float | None = None, params: bool = False) -> str:
        """A plain-text table for people: one line per layer, or per parameter with ``params=True``."""
        from layerdecay.render import plan_table

        return plan_table(self, lr=lr, params=params)


def format_group_name(layer_ids: Sequence[int], decay: bool, lr_mult_extra: float | None) -> str:
    """Stable, readable group names: ``layer_3_decay``, ``layers_0-2_no_decay``, ``layer_13_decay_x10``."""
    first, last = layer_ids[0], layer_ids[-1]
    base = f"layer_{first}" if first == last else f"layers_{first}-{last}"
    name = f"{base}_{'decay' if decay else 'no_decay'}"
    if lr_mult_extra is not None and lr_mult_extra != 1.0:
        name += f"_x{lr_mult_extra:g}"
    return name
