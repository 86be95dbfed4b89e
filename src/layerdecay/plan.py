"""The Plan: one row per trainable parameter. Everything else (param groups, the optimizer, the table,
JSON, the CLI) reads it; nothing is computed twice."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import chain
from typing import Any, Literal, NamedTuple

import torch

from layerdecay._gc import gc_paused

__all__ = ["Bucket", "GroupSpec", "LayerSummary", "Plan", "PlanRow", "Resolved", "ScaleMode"]

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


class Resolved(NamedTuple):
    """A parameter's final policy outcome: every field decided, and by whom."""

    decay: bool
    reason: str
    lr_mult: float | None
    wd_mult: float | None
    exclude: bool
    decided_by: str


class Bucket(NamedTuple):
    """Parameters that share a layer id and every hyperparameter (the policy's reasons may differ).

    The planning pass only appends each parameter's position (in the model view) to its bucket; rows,
    groups and param groups are all derived from the buckets, when they are asked for.

    Attributes:
        layer_id: The layer id of every member.
        lr_mult: The layer's scale times the ``lr_mult`` pattern factor.
        weight_decay: The weight decay of every member (0.0: excluded from decay).
        extra: The ``lr_mult`` pattern factor, None when no pattern applied.
        excluded: The members are left out of the optimizer.
        members: Positions in the model view, in model order.
    """

    layer_id: int
    lr_mult: float
    weight_decay: float
    extra: float | None
    excluded: bool
    members: list[int]


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
        groups: The param groups (``GroupSpec.rows`` index ``rows``), ordered by first layer id, decayed before
            not, then by lr multiplier and weight decay: a total order, the same in every process.
        parameters: The tensors, aligned with ``rows``.
    """

    num_layers: int
    scales: tuple[float, ...]
    layer_decay: float
    weight_decay: float
    recipe: str | None
    owner: str | None
    fallback: str | None
    warnings: tuple[str, ...]
    layer_by: str = field(repr=False)
    buckets: tuple[Bucket, ...] = field(repr=False)
    # Each trainable parameter's policy outcome: view position -> index into ``outcomes``.
    outcomes: tuple[Resolved, ...] = field(repr=False)
    outcome_at: Sequence[int] = field(repr=False)
    # The model view's names and tensors (every parameter, frozen ones included); buckets index into them.
    view_names: tuple[str, ...] = field(repr=False)
    view_params: tuple[torch.Tensor, ...] = field(repr=False)
    true_shapes: dict[int, torch.Size] = field(default_factory=dict, repr=False)

    @cached_property
    def _order(self) -> list[int]:
        """View positions of the trainable parameters, in model order."""
        return sorted(chain.from_iterable(b.members for b in self.buckets))

    @cached_property
    def _merged(self) -> list[tuple[tuple[int, ...], float, float, float | None, list[int], str]]:
        """Groups as (layer ids, lr_mult, weight_decay, lr_mult pattern factor, view positions, name), sorted.

        Buckets with equal hyperparameters in different layers (equal scales, e.g. ``layer_decay=1``) merge.
        """
        merged: dict[tuple[float, float], list[Bucket]] = {}
        for b in self.buckets:
            if not b.excluded:
                parts = merged.get((b.lr_mult, b.weight_decay))
                if parts is None:
                    merged[(b.lr_mult, b.weight_decay)] = [b]
                else:
                    parts.append(b)
        out = []
        for (mult, wd), parts in merged.items():
            if len(parts) == 1:  # a bucket's members are already in model order
                only = parts[0]
                ids: tuple[int, ...] = (only.layer_id,)
                extra, members = only.extra, only.members
            else:
                members = sorted(chain.from_iterable(b.members for b in parts))
                ids = tuple(sorted({b.layer_id for b in parts}))
                extras = {b.extra for b in parts}
                extra = next(iter(extras)) if len(extras) == 1 else None
            out.append((ids, mult, wd, extra, members, _group_name(ids, wd > 0.0, extra)))
        # By first layer id, decay before no decay, then lr_mult and weight decay: (lr_mult, weight decay) is
        # unique per group, so the order is total and owes nothing to the order the buckets came in.
        out.sort(key=lambda g: (g[0][0], g[2] == 0.0, g[1], g[2]))
        return out

    @cached_property
    def groups(self) -> tuple[GroupSpec, ...]:
        position = {v: k for k, v in enumerate(self._order)}
        return tuple(
            GroupSpec(name, ids, mult, wd, tuple(map(position.__getitem__, members)))
            for ids, mult, wd, _extra, members, name in self._merged
        )

    @cached_property
    def parameters(self) -> tuple[torch.Tensor, ...]:
        params = self.view_params
        return tuple(params[i] for i in self._order)

    @cached_property
    @gc_paused
    def rows(self) -> tuple[PlanRow, ...]:
        bucket_of: dict[int, Bucket] = {}
        for b in self.buckets:
            bucket_of.update(dict.fromkeys(b.members, b))
        group_of: dict[int, str] = {}
        for *_, members, name in self._merged:
            group_of.update(dict.fromkeys(members, name))
        outcomes, outcome_at = self.outcomes, self.outcome_at
        rows = []
        for i in self._order:
            b = bucket_of[i]
            param = self.view_params[i]
            shape = self.true_shapes.get(id(param), param.shape)
            r = outcomes[outcome_at[i]]
            rows.append(PlanRow(self.view_names[i], tuple(shape), shape.numel(), b.layer_id, b.lr_mult,
                                b.weight_decay, r.reason, group_of.get(i, ""), self.layer_by, r.decided_by,
                                r.exclude))
        return tuple(rows)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {self.view_names[i]: k for k, i in enumerate(self._order)}

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[PlanRow]:
        return iter(self.rows)

    def row(self, name: str) -> PlanRow:
        """The row of the parameter called ``name`` (normalized)."""
        return self.rows[self._index[name]]

    @gc_paused
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
        pick = self._named.__getitem__ if named else self.view_params.__getitem__
        by_lr = scale_mode == "lr"
        base_wd = self.weight_decay
        for ids, mult, wd, _extra, members, name in self._merged:
            group: dict[str, Any] = {
                "params": list(map(pick, members)),
                "lr": lr * mult if by_lr else lr,
                "weight_decay": wd,
                "layer_id": ids[0],
                "lr_mult": mult,
                "wd_mult": wd / base_wd if base_wd else 0.0,
                "group_name": name,
            }
            if not by_lr:
                group["lr_scale"] = mult
            groups.append(group)
        return groups

    @cached_property
    def _named(self) -> tuple[tuple[str, torch.Tensor], ...]:
        """(name, tensor) of every parameter of the view, by position: what ``named`` param groups hold."""
        return tuple(zip(self.view_names, self.view_params, strict=True))

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
        names = [r.name for r in self.rows]
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


# The same few names come back plan after plan (layer_3_decay, ...): formatted once each. Room for every name of
# a model of thousands of layers, so that a deep model's plans pay what a shallow one's do.
_group_name = lru_cache(maxsize=1 << 16)(format_group_name)
