"""Rendering of plans for people: tables (plain text or rich), and the side-by-side comparison of two plans.

Everything here reads :class:`~layerdecay.plan.Plan` objects through their public attributes and
arranges what they already hold; no layer id, multiplier or decay is computed here. ``Plan.table()`` is
plain text; :func:`print_plan` uses rich on a terminal. rich is imported only when it is used.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from layerdecay.plan import Plan, PlanRow

__all__ = [
    "LayerPair",
    "ParamDiff",
    "PlanComparison",
    "TableData",
    "compare_plans",
    "comparison_text",
    "format_table",
    "layer_table",
    "param_table",
    "plan_header",
    "plan_table",
    "print_comparison",
    "print_plan",
    "use_rich",
]


class TableData(NamedTuple):
    """A table before it is drawn: the same cells feed the plain and the rich renderer."""

    headers: list[str]
    rows: list[list[str]]
    right: list[bool]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[bool]) -> str:
    """Align ``rows`` under ``headers`` in plain text (``right`` marks right-aligned columns)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _count(n: int) -> str:
    return f"{n:,}"


def _mult(x: float) -> str:
    return f"{x:.4g}"


def _lr(x: float) -> str:
    return f"{x:.3g}"


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def plan_header(plan: Plan) -> str:
    """One line on who planned the model and how, plus the fallback used, if any."""
    owner = plan.owner or "nobody (no plugin claimed the model)"
    recipe = plan.recipe or "default"
    total = sum(r.numel for r in plan.rows if not r.excluded)
    head = (f"owner: {owner}   recipe: {recipe}   layers: {plan.num_layers}   layer_decay: {plan.layer_decay:g}   "
            f"weight_decay: {plan.weight_decay:g}   groups: {len(plan.groups)}   "
            f"trainable: {len(plan.rows)} tensors, {_count(total)} elements")
    if plan.fallback:
        head += f"\nfallback: {plan.fallback}"
    return head


def _layer_weight_decays(plan: Plan) -> list[str]:
    """Per layer id, the distinct weight decays its parameters get, largest first ('0.05, 0')."""
    values: list[set[float]] = [set() for _ in range(plan.num_layers)]
    for r in plan.rows:
        if not r.excluded:
            values[r.layer_id].add(r.weight_decay)
    return [", ".join(f"{v:g}" for v in sorted(vs, reverse=True)) or "-" for vs in values]


def layer_table(plan: Plan, *, lr: float | None = None) -> TableData:
    """One row per layer id (empty ones included): multiplier, lr, weight decay, counts, example names."""
    with_lr = lr is not None
    headers = ["layer", "lr_mult"] + (["lr"] if with_lr else []) + [
        "wd", "tensors", "elements", "decay", "no decay", "examples"]
    right = [True, True] + ([True] if with_lr else []) + [True, True, True, True, True, False]
    wds = _layer_weight_decays(plan)
    rows = [
        [str(s.layer_id), _mult(s.scale)] + ([_lr(lr * s.scale)] if lr is not None else [])
        + [wds[s.layer_id], str(s.tensors), _count(s.numel), _count(s.decay_numel), _count(s.no_decay_numel),
           ", ".join(s.examples) if s.tensors else "(empty)"]
        for s in plan.layers()
    ]
    return TableData(headers, rows, right)


def param_table(plan: Plan, *, lr: float | None = None) -> TableData:
    """One row per trainable parameter, with why it gets its weight decay and which plugin decided."""
    with_lr = lr is not None
    headers = ["name", "shape", "layer", "lr_mult"] + (["lr"] if with_lr else []) + [
        "wd", "reason", "layer by", "decay by", "group"]
    right = [False, False, True, True] + ([True] if with_lr else []) + [True, False, False, False, False]
    rows = [
        [r.name, _shape(r.shape), str(r.layer_id), _mult(r.lr_mult)]
        + ([_lr(lr * r.lr_mult)] if lr is not None else [])
        + [f"{r.weight_decay:g}", r.reason, r.layer_by, r.decay_by, r.group or "(excluded)"]
        for r in plan.rows
    ]
    return TableData(headers, rows, right)


def _warnings_text(plan: Plan) -> str:
    return "warnings:\n" + "\n".join(f"  ! {w}" for w in plan.warnings) if plan.warnings else ""


def plan_table(plan: Plan, *, lr: float | None = None, params: bool = False) -> str:
    """The plan as plain text: a header, a table by layer (or by parameter), then the warnings."""
    data = param_table(plan, lr=lr) if params else layer_table(plan, lr=lr)
    text = plan_header(plan) + "\n\n" + format_table(*data[:2], right=data.right)
    if plan.warnings:
        text += "\n\n" + _warnings_text(plan)
    return text


# --- comparison ----------------------------------------------------------------------------------------------


class LayerPair(NamedTuple):
    """One layer id in both plans; None where a plan has fewer layer ids."""

    layer_id: int
    a_lr_mult: float | None
    a_numel: int | None
    b_lr_mult: float | None
    b_numel: int | None


class ParamDiff(NamedTuple):
    """A parameter that the two plans treat differently."""

    name: str
    a: PlanRow
    b: PlanRow


def _differs(x: float, y: float) -> bool:
    return not math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0)


class PlanComparison(NamedTuple):
    """Two plans of one model side by side (see :func:`compare_plans`).

    Attributes:
        a, b: The plans; ``labels`` names them (their recipes by default).
        layers: Per layer id, both multipliers and element counts.
        diffs: Parameters whose lr multiplier, weight decay or layer id differ (or excluded in one only).
        lr_mult_differs, weight_decay_differs, layer_id_differs: How many parameters differ in each.
        only_a, only_b: Parameter names that only one plan has (different models, or frozen differently).
    """

    a: Plan
    b: Plan
    labels: tuple[str, str]
    layers: tuple[LayerPair, ...]
    diffs: tuple[ParamDiff, ...]
    lr_mult_differs: int
    weight_decay_differs: int
    layer_id_differs: int
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]

    @property
    def differing(self) -> int:
        """Parameters whose lr multiplier or weight decay differ between the plans."""
        return sum(1 for d in self.diffs if _differs(d.a.lr_mult, d.b.lr_mult) or d.a.weight_decay != d.b.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        """The comparison as plain data (what ``layerdecay explain --compare --json`` prints)."""

        def side(row: PlanRow) -> dict[str, Any]:
            return {"layer_id": row.layer_id, "lr_mult": row.lr_mult, "weight_decay": row.weight_decay,
                    "excluded": row.excluded}

        return {
            "labels": list(self.labels),
            "layers": [p._asdict() for p in self.layers],
            "differing": self.differing,
            "lr_mult_differs": self.lr_mult_differs,
            "weight_decay_differs": self.weight_decay_differs,
            "layer_id_differs": self.layer_id_differs,
            "params": [{"name": d.name, "a": side(d.a), "b": side(d.b)} for d in self.diffs],
            "only_a": list(self.only_a),
            "only_b": list(self.only_b),
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
        }


def _label(plan: Plan) -> str:
    return plan.recipe or "default"


def compare_plans(a: Plan, b: Plan, *, labels: tuple[str, str] | None = None) -> PlanComparison:
    """Line two plans of the same model up: per layer id, and per parameter (matched by name)."""
    if labels is None:
        labels = (_label(a), _label(b))
        if labels[0] == labels[1]:
            labels = (labels[0] + " (a)", labels[1] + " (b)")
    la, lb = a.layers(), b.layers()
    layers = tuple(
        LayerPair(
            i,
            la[i].scale if i < len(la) else None, la[i].numel if i < len(la) else None,
            lb[i].scale if i < len(lb) else None, lb[i].numel if i < len(lb) else None,
        )
        for i in range(max(len(la), len(lb)))
    )
    rows_b = {r.name: r for r in b.rows}
    names_a = {r.name for r in a.rows}
    diffs = []
    n_mult = n_wd = n_lid = 0
    for ra in a.rows:
        rb = rows_b.get(ra.name)
        if rb is None:
            continue
        mult, wd, lid = _differs(ra.lr_mult, rb.lr_mult), ra.weight_decay != rb.weight_decay, ra.layer_id != rb.layer_id
        n_mult += mult
        n_wd += wd
        n_lid += lid
        if mult or wd or lid or ra.excluded != rb.excluded:
            diffs.append(ParamDiff(ra.name, ra, rb))
    return PlanComparison(
        a, b, labels, layers, tuple(diffs), n_mult, n_wd, n_lid,
        tuple(r.name for r in a.rows if r.name not in rows_b),
        tuple(r.name for r in b.rows if r.name not in names_a),
    )


def _opt(value: float | int | None, fmt: Any) -> str:
    return "-" if value is None else fmt(value)


def comparison_layer_table(cmp: PlanComparison) -> TableData:
    """Per layer id: both multipliers and both element counts."""
    la, lb = cmp.labels
    headers = ["layer", f"lr_mult {la}", f"lr_mult {lb}", f"elements {la}", f"elements {lb}"]
    rows = [
        [str(p.layer_id), _opt(p.a_lr_mult, _mult), _opt(p.b_lr_mult, _mult),
         _opt(p.a_numel, _count), _opt(p.b_numel, _count)]
        for p in cmp.layers
    ]
    return TableData(headers, rows, [True] * 5)


def comparison_param_table(cmp: PlanComparison) -> TableData:
    """The parameters the two plans treat differently."""
    la, lb = cmp.labels

    def wd(r: PlanRow) -> str:
        return "excluded" if r.excluded else f"{r.weight_decay:g}"

    headers = ["name", f"layer {la}", f"layer {lb}", f"lr_mult {la}", f"lr_mult {lb}", f"wd {la}", f"wd {lb}"]
    rows = [
        [d.name, str(d.a.layer_id), str(d.b.layer_id), _mult(d.a.lr_mult), _mult(d.b.lr_mult), wd(d.a), wd(d.b)]
        for d in cmp.diffs
    ]
    return TableData(headers, rows, [False] + [True] * 6)


def _side_header(label: str, plan: Plan) -> str:
    return f"{label}: " + plan_header(plan).replace("\n", "\n" + " " * (len(label) + 2))


def comparison_summary(cmp: PlanComparison) -> str:
    """How many parameters differ, and in what."""
    total = len(cmp.a.rows)
    text = (f"{cmp.differing} of {total} parameters differ in lr multiplier or weight decay "
            f"({cmp.lr_mult_differs} in lr multiplier, {cmp.weight_decay_differs} in weight decay); "
            f"{cmp.layer_id_differs} have a different layer id.")
    if cmp.only_a or cmp.only_b:
        text += f"\nonly in {cmp.labels[0]}: {len(cmp.only_a)}; only in {cmp.labels[1]}: {len(cmp.only_b)}"
    return text


def _comparison_warnings(cmp: PlanComparison) -> str:
    lines = [f"  ! [{label}] {w}" for label, plan in zip(cmp.labels, (cmp.a, cmp.b), strict=True)
             for w in plan.warnings]
    return "warnings:\n" + "\n".join(lines) if lines else ""


def comparison_text(cmp: PlanComparison, *, params: bool = False) -> str:
    """Both plans side by side as plain text; ``params=True`` lists the differing parameters."""
    data = comparison_param_table(cmp) if params else comparison_layer_table(cmp)
    parts = [_side_header(cmp.labels[0], cmp.a), _side_header(cmp.labels[1], cmp.b),
             "", format_table(*data[:2], right=data.right), "", comparison_summary(cmp)]
    warns = _comparison_warnings(cmp)
    if warns:
        parts += ["", warns]
    return "\n".join(parts)


# --- terminal output --------------------------------------------------------------------------------------------


def use_rich(file: IO[str] | None = None) -> bool:
    """Whether to draw with rich: ``file`` is a terminal, ``NO_COLOR`` is unset, ``TERM`` is not dumb, and rich
    is installed."""
    file = file if file is not None else sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(file, "isatty", None)
    if not (callable(isatty) and isatty()):
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _rich_table(data: TableData, title: str | None = None) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", header_style="bold")
    for header, right in zip(data.headers, data.right, strict=True):
        # Numbers never wrap; names fold rather than being cut with an ellipsis.
        table.add_column(header, justify="right" if right else "left", no_wrap=right, overflow="fold",
                         style="dim" if header in ("examples", "reason") else None)
    for row in data.rows:
        table.add_row(*[f"[dim]{c}[/dim]" if c in ("(empty)", "(excluded)") else c for c in row])
    return table


def _rich_print(file: IO[str], head: str, data: TableData, tail: str, warns: Sequence[str],
                width: int | None) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(file=file, highlight=False, width=width)
    console.print(escape(head), style="bold")
    console.print(_rich_table(TableData(data.headers, [[escape(c) for c in r] for r in data.rows], data.right)))
    if tail:
        console.print(escape(tail))
    if warns:
        console.print("warnings:", style="bold yellow")
        for w in warns:
            console.print(f"  ! {escape(w)}", style="yellow")


def print_plan(plan: Plan, *, lr: float | None = None, params: bool = False, file: IO[str] | None = None,
               rich: bool | None = None, width: int | None = None) -> None:
    """Print the plan's table: with rich on a terminal (see :func:`use_rich`), else :func:`plan_table`'s text.

    ``rich`` forces the choice; ``width`` sets rich's line width (default: the terminal's).
    """
    file = file if file is not None else sys.stdout
    if not (use_rich(file) if rich is None else rich):
        print(plan_table(plan, lr=lr, params=params), file=file)
        return
    data = param_table(plan, lr=lr) if params else layer_table(plan, lr=lr)
    _rich_print(file, plan_header(plan), data, "", plan.warnings, width)


def print_comparison(cmp: PlanComparison, *, params: bool = False, file: IO[str] | None = None,
                     rich: bool | None = None, width: int | None = None) -> None:
    """Print two plans side by side: with rich on a terminal, else :func:`comparison_text`'s text."""
    file = file if file is not None else sys.stdout
    if not (use_rich(file) if rich is None else rich):
        print(comparison_text(cmp, params=params), file=file)
        return
    data = comparison_param_table(cmp) if params else comparison_layer_table(cmp)
    head = _side_header(cmp.labels[0], cmp.a) + "\n" + _side_header(cmp.labels[1], cmp.b)
    warns = [f"[{label}] {w}" for label, plan in zip(cmp.labels, (cmp.a, cmp.b), strict=True) for w in plan.warnings]
    _rich_print(file, head, data, comparison_summary(cmp), warns, width)
