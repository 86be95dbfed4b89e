"""A picture of a plan: the lr multiplier of each layer id, and where the elements sit.

Needs matplotlib, the ``layerdecay[plot]`` extra; it is imported only when a plot is drawn, and drawn on a
bare :class:`matplotlib.figure.Figure` (no pyplot, no GUI backend, no global state).

The figure has two panels sharing the layer axis:

* top, log scale: one bar per layer id at its lr multiplier (hatched when the layer holds no parameter);
  with ``compare``, a second bar per layer id for the other plan;
* bottom, log scale: the elements of each layer id that get weight decay, and (narrow hatched bars) those
  that do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerdecay.errors import LayerDecayError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from layerdecay.plan import Plan

__all__ = ["MissingExtraError", "plot_plan", "require_matplotlib"]

LR_MULT_GID = "lr_mult"
ELEMENTS_GID = "elements"
_COLORS = ("tab:blue", "tab:orange")


class MissingExtraError(LayerDecayError, ImportError):
    """An optional feature needs a package that is not installed; the message names the extra to install."""


def require_matplotlib() -> Any:
    """Import matplotlib, or raise :class:`MissingExtraError` naming the ``layerdecay[plot]`` extra."""
    try:
        import matplotlib
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"plotting a plan needs matplotlib, which cannot be imported ({exc}); install it with "
            "pip install 'layerdecay[plot]'."
        ) from exc
    return matplotlib


def _label(plan: Plan) -> str:
    return f"{plan.recipe or 'default'} ({plan.owner or 'no owner'})"


def plot_plan(plan: Plan, path: str | Path | None = None, compare: Plan | None = None, *,
              title: str | None = None, labels: tuple[str, str] | None = None) -> Figure:
    """Draw ``plan`` (and ``compare`` beside it) and return the figure; also save it to ``path`` when given.

    Args:
        plan: The plan to draw.
        path: Where to save the image; the suffix picks the format (``.png``, ``.svg``, ``.pdf``).
        compare: A second plan of the same model (another recipe), drawn as a second bar per layer id.
        title: Figure title; by default the plan's owner, recipe and decay.
        labels: Legend names of ``plan`` and ``compare``; by default their recipes and owners.

    Returns:
        The :class:`matplotlib.figure.Figure`. The multiplier bars are in the axes with gid ``"lr_mult"``,
        one :class:`~matplotlib.container.BarContainer` per plan (its label is the plan's legend name).
    """
    require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    plans = [plan] if compare is None else [plan, compare]
    names = list(labels) if labels is not None else [_label(p) for p in plans]
    if len(names) != len(plans):
        raise ValueError(f"labels must name {len(plans)} plan(s), got {labels!r}.")

    n = max(p.num_layers for p in plans)
    fig = Figure(figsize=(max(6.0, 0.45 * n + 2.5), 6.0), layout="constrained")
    ax_mult, ax_num = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    ax_mult.set_gid(LR_MULT_GID)
    ax_num.set_gid(ELEMENTS_GID)

    width = 0.8 / len(plans)
    for k, (p, name, color) in enumerate(zip(plans, names, _COLORS, strict=False)):
        summaries = p.layers()
        xs = [s.layer_id - 0.4 + width * (k + 0.5) for s in summaries]
        bars = ax_mult.bar(xs, [s.scale for s in summaries], width=width, color=color, label=name)
        for bar, s in zip(bars, summaries, strict=True):
            if s.tensors == 0:
                bar.set_fill(False)
                bar.set_hatch("//")
                bar.set_edgecolor(color)
        # Log scale: the no-decay count is a narrower hatched bar in front of the decayed one, so both
        # stay readable even when one is a thousand times the other.
        ax_num.bar(xs, [s.decay_numel for s in summaries], width=width, color=color, label=f"{name}: decayed")
        ax_num.bar(xs, [s.no_decay_numel for s in summaries], width=width * 0.5, color="white", hatch="////",
                   edgecolor=color, linewidth=0.8, label=f"{name}: no decay")

    ax_mult.set_yscale("log")
    ax_mult.set_ylabel("lr multiplier (log)")
    ax_mult.grid(axis="y", which="both", alpha=0.3)
    ax_mult.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax_num.set_yscale("log")
    ax_num.set_ylabel("elements (log)")
    ax_num.set_xlabel("layer id")
    ax_num.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax_num.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_num.set_xlim(-0.6, n - 0.4)
    if title is None:
        shown = " vs ".join(f"{p.recipe or 'default'} ({p.num_layers} layer ids)" for p in plans)
        title = (f"{plan.owner or 'no'} plugin, recipe {shown}; layer_decay={plan.layer_decay:g}, "
                 f"weight_decay={plan.weight_decay:g}")
    fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
