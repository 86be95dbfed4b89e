"""Plain-text rendering of a Plan (the CLI and ``Plan.table()``); reads the plan, computes nothing new."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layerdecay.plan import Plan


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[bool]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _count(n: int) -> str:
    return f"{n:,}"


def plan_header(plan: Plan) -> str:
    owner = plan.owner or "nobody (no plugin claimed the model)"
    recipe = plan.recipe or "default"
    total = sum(r.numel for r in plan.rows if not r.excluded)
    head = (f"owner: {owner}   recipe: {recipe}   layers: {plan.num_layers}   layer_decay: {plan.layer_decay:g}   "
            f"weight_decay: {plan.weight_decay:g}   groups: {len(plan.groups)}   "
            f"trainable: {len(plan.rows)} tensors, {_count(total)} elements")
    if plan.fallback:
        head += f"\nfallback: {plan.fallback}"
    return head


def plan_table(plan: Plan, *, lr: float | None = None, params: bool = False) -> str:
    """The plan as text: a header, a table by layer (or by parameter), then the warnings."""
    if params:
        headers = ["name", "shape", "layer", "lr_mult"] + (["lr"] if lr is not None else []) + [
            "wd", "reason", "layer by", "decay by", "group"]
        right = [False, False, True, True] + ([True] if lr is not None else []) + [True, False, False, False, False]
        rows = [
            [r.name, "x".join(map(str, r.shape)) or "scalar", str(r.layer_id), f"{r.lr_mult:.4g}"]
            + ([f"{lr * r.lr_mult:.3g}"] if lr is not None else [])
            + [f"{r.weight_decay:g}", r.reason, r.layer_by, r.decay_by, r.group or "(excluded)"]
            for r in plan.rows
        ]
    else:
        headers = ["layer", "lr_mult"] + (["lr"] if lr is not None else []) + [
            "tensors", "elements", "decay", "no decay", "examples"]
        right = [True, True] + ([True] if lr is not None else []) + [True, True, True, True, False]
        rows = [
            [str(s.layer_id), f"{s.scale:.4g}"] + ([f"{lr * s.scale:.3g}"] if lr is not None else [])
            + [str(s.tensors), _count(s.numel), _count(s.decay_numel), _count(s.no_decay_numel),
               ", ".join(s.examples) if s.tensors else "(empty)"]
            for s in plan.layers()
        ]
    text = plan_header(plan) + "\n\n" + format_table(headers, rows, right=right)
    if plan.warnings:
        text += "\n\nwarnings:\n" + "\n".join(f"  ! {w}" for w in plan.warnings)
    return text
