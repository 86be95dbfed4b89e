"""Rendering: the tables (plain and rich) and the side-by-side comparison show the plan's numbers."""

from __future__ import annotations

import io
import json
import warnings

import pytest

import layerdecay
from layerdecay.render import (
    compare_plans,
    comparison_text,
    layer_table,
    param_table,
    print_comparison,
    print_plan,
    use_rich,
)
from tests.models import CellNet as Net
from tests.models import table_rows

# Independent of the code under test: element counts of each part, and decay ** (top - i).
ELEMENTS = [16, 20, 20, 20, 10]  # weight + bias of patch, cell 0..2, head
DECAYED = [12, 16, 16, 16, 8]  # the weights (matrices get weight decay, biases do not)
SCALES = [0.5 ** (4 - i) for i in range(5)]


@pytest.fixture
def plan() -> layerdecay.Plan:
    host = layerdecay.create_plugin_host(autoload=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", layerdecay.LayerDecayWarning)
        return layerdecay.explain(Net(), host=host, layer_decay=0.5, weight_decay=0.05)


def test_layer_table_numbers(plan):
    text = plan.table(lr=1e-3)
    rows = table_rows(text)
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4"]
    for i, r in enumerate(rows):
        _, mult, lr, wd, tensors, elements, decay, no_decay = r[:8]
        assert float(mult) == pytest.approx(SCALES[i], rel=1e-3)
        assert float(lr) == pytest.approx(1e-3 * SCALES[i], rel=1e-2)
        assert wd == "0.05, 0"
        assert int(tensors) == 2
        assert int(elements.replace(",", "")) == ELEMENTS[i]
        assert int(decay.replace(",", "")) == DECAYED[i]
        assert int(no_decay.replace(",", "")) == ELEMENTS[i] - DECAYED[i]
    assert rows[4][-1] == "head.weight, head.bias"
    assert "owner: generic" in text and "layers: 5" in text
    assert "\x1b[" not in text  # Plan.table() is plain text


def test_layer_table_without_lr_has_no_lr_column(plan):
    assert "lr" not in layer_table(plan).headers
    assert layer_table(plan, lr=1.0).headers[2] == "lr"


def test_param_table_one_row_per_parameter_with_reasons(plan):
    data = param_table(plan)
    names = [r[0] for r in data.rows]
    assert names == [n for n, _ in Net().named_parameters()]
    col = {h: i for i, h in enumerate(data.headers)}
    head_bias = data.rows[names.index("head.bias")]
    assert head_bias[col["wd"]] == "0"
    assert "bias" in head_bias[col["reason"]]
    assert head_bias[col["decay by"]] == "core"
    assert head_bias[col["layer by"]] == "generic"
    weight = data.rows[names.index("cells.1.lin.weight")]
    assert weight[col["wd"]] == "0.05" and weight[col["layer"]] == "2" and weight[col["shape"]] == "4x4"


def test_plain_params_text_lists_every_parameter(plan):
    text = plan.table(params=True)
    listed = [r[0] for r in table_rows(text)]
    assert listed == [r.name for r in plan.rows]


def test_use_rich_only_on_a_terminal_without_no_color(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert use_rich(Tty()) is True
    assert use_rich(io.StringIO()) is False
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_rich(Tty()) is False


def test_rich_output_has_the_same_cells(plan):
    out = io.StringIO()
    print_plan(plan, lr=1e-3, file=out, rich=True, width=250)
    text = out.getvalue()
    assert "owner: generic" in text
    for cell in ("0.0625", "0.000125", "head.weight, head.bias", "warnings:", "generic fallback"):
        assert cell in text


def test_print_plan_is_plain_off_a_terminal(plan):
    out = io.StringIO()
    print_plan(plan, file=out)
    assert out.getvalue() == plan.table() + "\n"


def other_plan(**kwargs) -> layerdecay.Plan:
    host = layerdecay.create_plugin_host(autoload=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", layerdecay.LayerDecayWarning)
        return layerdecay.explain(Net(), host=host, layer_decay=0.5, weight_decay=0.05, **kwargs)


def test_compare_counts_parameters_that_differ(plan):
    # head: lr x2 (2 params); cells.0: weight loses decay (its bias never had it).
    other = other_plan(lr_mult={"head": 2.0}, no_weight_decay=["cells.0"])
    cmp = compare_plans(plan, other, labels=("base", "tuned"))
    assert cmp.lr_mult_differs == 2
    assert cmp.weight_decay_differs == 1
    assert cmp.layer_id_differs == 0
    assert cmp.differing == 3
    assert sorted(d.name for d in cmp.diffs) == ["cells.0.lin.weight", "head.bias", "head.weight"]
    assert [(p.layer_id, p.a_lr_mult, p.b_lr_mult, p.a_numel, p.b_numel) for p in cmp.layers] == [
        (i, pytest.approx(SCALES[i]), pytest.approx(SCALES[i]), ELEMENTS[i], ELEMENTS[i]) for i in range(5)
    ]
    text = comparison_text(cmp)
    assert "3 of 10 parameters differ in lr multiplier or weight decay (2 in lr multiplier, 1 in weight decay)" in text
    assert "lr_mult base" in text and "elements tuned" in text
    json.dumps(cmp.to_dict())  # plain data


def test_compare_plans_with_different_layer_counts(plan):
    class Flat:
        """cells share one layer: patch 0, cells 1, head 2."""

        __name__ = "flat"

        @layerdecay.hookimpl
        def layerdecay_num_layers(self, model, recipe):
            return 3 if isinstance(model.model, Net) else None

        @layerdecay.hookimpl
        def layerdecay_layer_id(self, model, num_layers):
            return lambda n: 0 if n.startswith("patch") else 1 if n.startswith("cells") else 2

    flat = other_plan(plugins=[Flat()])
    cmp = compare_plans(plan, flat)
    assert len(cmp.layers) == 5
    assert cmp.layers[1] == (1, pytest.approx(0.125), 20, pytest.approx(0.5), 60)
    assert cmp.layers[4][3:] == (None, None)
    # patch: 1/16 vs 1/4; cells.0: 1/8 vs 1/2; cells.1: 1/4 vs 1/2; cells.2 and head agree (1/2 and 1).
    assert cmp.lr_mult_differs == 6
    assert cmp.labels == ("default (a)", "default (b)")
    rows = table_rows(comparison_text(cmp))
    assert rows[4] == ["4", "1", "-", "10", "-"]
    out = io.StringIO()
    print_comparison(cmp, params=True, file=out, rich=True, width=250)
    # every parameter changed layer id or multiplier; cells.2 only its layer id (3 -> 1, both at 0.5)
    assert len(cmp.diffs) == 10
    line = next(x for x in out.getvalue().splitlines() if "cells.2.lin.weight" in x)
    assert line.split() == ["cells.2.lin.weight", "3", "1", "0.5", "0.5", "0.05", "0.05"]
