"""The plot: one multiplier bar per layer id on a log axis, element bars split by weight decay."""

from __future__ import annotations

import sys
import warnings

import pytest

import layerdecay
from layerdecay.plot import MissingExtraError, plot_plan, require_matplotlib
from tests.models import CellNet as Net

pytest.importorskip("matplotlib")


class Gappy:
    """patch 0, cells 1-3, head 6: layer ids 4 and 5 are empty."""

    __name__ = "gappy"

    @layerdecay.hookimpl
    def layerdecay_num_layers(self, model, recipe):
        return 7 if isinstance(model.model, Net) else None

    @layerdecay.hookimpl
    def layerdecay_layer_id(self, model, num_layers):
        def layer_id(name: str) -> int:
            if name.startswith("patch"):
                return 0
            if name.startswith("cells."):
                return int(name.split(".")[1]) + 1
            return 6

        return layer_id


def make_plan(**kwargs) -> layerdecay.Plan:
    host = layerdecay.create_plugin_host(autoload=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", layerdecay.LayerDecayWarning)
        return layerdecay.explain(Net(), host=host, layer_decay=0.5, **kwargs)


def bars(fig, gid: str):
    (ax,) = [a for a in fig.axes if a.get_gid() == gid]
    return ax, ax.containers


def test_png_with_one_bar_per_layer_on_a_log_axis(tmp_path):
    plan = make_plan()
    path = tmp_path / "plan.png"
    fig = plot_plan(plan, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax, (container,) = bars(fig, "lr_mult")
    assert ax.get_yscale() == "log"
    assert len(container) == 5  # patch, 3 cells, head
    assert [b.get_height() for b in container] == pytest.approx([0.5 ** (4 - i) for i in range(5)])
    centers = [b.get_x() + b.get_width() / 2 for b in container]
    assert centers == pytest.approx(range(5))


def test_elements_split_into_decayed_and_no_decay():
    fig = plot_plan(make_plan())
    _, (decayed, no_decay) = bars(fig, "elements")
    assert [b.get_height() for b in decayed] == [12, 16, 16, 16, 8]  # the weight matrices
    assert [b.get_height() for b in no_decay] == [4, 4, 4, 4, 2]  # the biases
    assert decayed.get_label().endswith("decayed") and no_decay.get_label().endswith("no decay")
    assert no_decay[0].get_hatch() and not decayed[0].get_hatch()


def test_empty_layers_are_drawn_hatched():
    fig = plot_plan(make_plan(plugins=[Gappy()]))
    _, (container,) = bars(fig, "lr_mult")
    assert len(container) == 7
    hatched = [i for i, b in enumerate(container) if b.get_hatch()]
    assert hatched == [4, 5]


def test_compare_draws_a_second_bar_per_layer(tmp_path):
    plan, other = make_plan(), make_plan(plugins=[Gappy()])
    fig = plot_plan(plan, tmp_path / "cmp.svg", compare=other, labels=("five", "seven"))
    assert (tmp_path / "cmp.svg").read_text().lstrip().startswith("<?xml")
    _, (a, b) = bars(fig, "lr_mult")
    assert (len(a), len(b)) == (5, 7)
    assert (a.get_label(), b.get_label()) == ("five", "seven")
    assert [x.get_height() for x in b] == pytest.approx([0.5 ** (6 - i) for i in range(7)])


def test_missing_matplotlib_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(MissingExtraError, match=r"layerdecay\[plot\]") as info:
        require_matplotlib()
    assert isinstance(info.value, layerdecay.LayerDecayError) and isinstance(info.value, ImportError)
    with pytest.raises(MissingExtraError):
        plot_plan(make_plan())
