"""The ``layerdecay`` command: output content, exit codes (0 ok, 1 model/plot failure, 2 usage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import layerdecay
from layerdecay.cli import main
from tests.models import CellNet as CliNet
from tests.models import table_rows

ROOT = Path(__file__).resolve().parents[1]
NET = "tests.test_cli:make_net"




def make_net() -> nn.Module:
    return CliNet()


def broken() -> nn.Module:
    raise RuntimeError("this factory always fails")


class TwoRecipes:
    """Owns CliNet: 'deep' (default) gives each cell a layer; 'flat' puts all cells in one."""

    __name__ = "two-recipes"

    @layerdecay.hookimpl
    def layerdecay_num_layers(self, model, recipe):
        if not isinstance(model.model, CliNet):
            return None
        return 5 if layerdecay.select_recipe(recipe, ("deep", "flat"), owner="two-recipes") == "deep" else 3

    @layerdecay.hookimpl
    def layerdecay_layer_id(self, model, recipe, num_layers):
        if not isinstance(model.model, CliNet):
            return None
        deep = num_layers == 5

        def layer_id(name: str) -> int:
            if name.startswith("patch"):
                return 0
            if name.startswith("cells."):
                return int(name.split(".")[1]) + 1 if deep else 1
            return num_layers - 1

        return layer_id


@pytest.fixture
def two_recipes():
    rule = TwoRecipes()
    layerdecay.register(rule)
    yield rule
    layerdecay.unregister(rule)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_table_by_layer(capsys):
    code, out, err = run(capsys, "explain", NET, "--layer-decay", "0.5", "--lr", "0.001")
    assert code == 0, err
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [float(r[1]) for r in rows] == pytest.approx([0.0625, 0.125, 0.25, 0.5, 1.0])
    assert [float(r[2]) for r in rows] == pytest.approx([6.25e-5, 1.25e-4, 2.5e-4, 5e-4, 1e-3], rel=1e-2)
    assert [r[5] for r in rows] == ["16", "20", "20", "20", "10"]  # elements per layer
    assert "generic fallback" in out  # the warning is in the output, not on stderr
    assert "\x1b[" not in out  # not a terminal: plain text


def test_explain_params_one_row_per_parameter(capsys):
    code, out, _ = run(capsys, "explain", NET, "--params")
    assert code == 0
    rows = table_rows(out)
    assert [r[0] for r in rows] == [n for n, _ in CliNet().named_parameters()]
    bias = next(r for r in rows if r[0] == "cells.0.lin.bias")
    assert bias[4] == "0" and "bias" in bias[5] and bias[7] == "core"


def test_explain_json(capsys):
    code, out, _ = run(capsys, "explain", NET, "--json", "--layer-decay", "0.5", "--weight-decay", "0.1")
    assert code == 0
    data = json.loads(out)
    assert data["num_layers"] == 5
    assert data["scales"] == pytest.approx([0.5 ** (4 - i) for i in range(5)])
    assert len(data["params"]) == 10
    weights = {p["name"]: p["weight_decay"] for p in data["params"]}
    assert weights["head.weight"] == 0.1 and weights["head.bias"] == 0.0
    assert any("generic fallback" in w for w in data["warnings"])


def test_explain_options_reach_the_plan(capsys):
    code, out, _ = run(capsys, "explain", NET, "--json", "--lr-mult", "head=10", "--no-weight-decay", "cells.0",
                       "--no-weight-decay", "nowhere", "--min-scale", "0.5", "--layer-decay", "0.5")
    assert code == 0
    data = json.loads(out)
    rows = {p["name"]: p for p in data["params"]}
    assert rows["head.weight"]["lr_mult"] == pytest.approx(10.0)
    assert rows["cells.0.lin.weight"]["weight_decay"] == 0.0
    assert data["scales"] == pytest.approx([0.5, 0.5, 0.5, 0.5, 1.0])
    assert any("'nowhere' matched no trainable parameter" in w for w in data["warnings"])
    assert any(w.startswith("min_scale=0.5 raised the scale of 3 layer id(s)") for w in data["warnings"])


def test_compare_two_recipes(capsys, two_recipes):
    code, out, err = run(capsys, "explain", NET, "--layer-decay", "0.5", "--compare", "flat")
    assert code == 0, err
    rows = table_rows(out)
    # deep: 0.5 ** (4 - i) over 5 ids; flat: 0.5 ** (2 - i) over 3 ids, all cells in id 1.
    assert rows == [
        ["0", "0.0625", "0.25", "16", "16"],
        ["1", "0.125", "0.5", "20", "60"],
        ["2", "0.25", "1", "20", "10"],
        ["3", "0.5", "-", "20", "-"],
        ["4", "1", "-", "10", "-"],
    ]
    # patch, cells.0 and cells.1 change multiplier (2 tensors each); cells.2 (0.5) and head (1) do not.
    assert "6 of 10 parameters differ in lr multiplier or weight decay" in out


def test_compare_json(capsys, two_recipes):
    code, out, _ = run(capsys, "explain", NET, "--recipe", "flat", "--compare", "deep", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["labels"] == ["flat", "deep"]
    # layer ids: cells.1 (1 vs 2), cells.2 (1 vs 3) and head (2 vs 4) move; patch and cells.0 stay
    assert data["differing"] == 6 and data["layer_id_differs"] == 6
    assert data["a"]["num_layers"] == 3 and data["b"]["num_layers"] == 5


def test_plot_file(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "plan.png"
    code, _, err = run(capsys, "explain", NET, "--plot", str(path))
    assert code == 0
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert str(path) in err


def test_plot_without_matplotlib_exits_1_naming_the_extra(capsys, monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run(capsys, "explain", NET, "--plot", str(tmp_path / "x.png"))
    assert code == 1
    assert "layerdecay[plot]" in err and out == ""


def test_plot_into_missing_folder_exits_1(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, _, err = run(capsys, "explain", NET, "--plot", str(tmp_path / "no" / "such" / "x.png"))
    assert code == 1 and "cannot write the plot" in err


@pytest.mark.parametrize("argv", [
    ["explain", NET, "--layer-decay", "-1"],
    ["explain", NET, "--layer-decay", "nan"],
    ["explain", NET, "--weight-decay", "-0.1"],
    ["explain", NET, "--min-scale", "2"],
    ["explain", NET, "--lr-mult", "head"],
    ["explain"],
    ["frobnicate"],
    [],
])
def test_usage_errors_exit_2(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage:" in err


def test_unknown_recipe_exits_2(capsys, two_recipes):
    code, _, err = run(capsys, "explain", NET, "--recipe", "nope")
    assert code == 2
    assert "recipe='nope'" in err and "'deep', 'flat'" in err


@pytest.mark.parametrize(("spec", "reason"), [
    ("tests.test_cli:broken", "this factory always fails"),
    ("tests.test_cli:missing", "has no attribute 'missing'"),
    ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
    ("just-a-word", "is not one of timm:<name>"),
    ("timm:no_such_model_xyz", "timm has no model 'no_such_model_xyz'"),
    ("torchvision:no_such_model_xyz", "torchvision has no model"),
    ("transformers:NoSuchConfigXyz", "transformers has no class 'NoSuchConfigXyz'"),
])
def test_model_that_cannot_be_built_exits_1(capsys, spec, reason):
    code, out, err = run(capsys, "explain", spec)
    assert code == 1
    assert reason in err and out == ""


def test_strict_with_warnings_exits_1(capsys):
    code, _, err = run(capsys, "explain", NET, "--strict")
    assert code == 1 and "strict=True" in err


def test_timm_vit_on_meta(capsys):
    pytest.importorskip("timm")
    code, out, err = run(capsys, "explain", "timm:vit_tiny_patch16_224", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["num_layers"] == 12 + 2  # 12 blocks, plus the embeddings below and the head above
    assert data["scales"][-1] == 1.0
    assert data["scales"][0] == pytest.approx(0.75 ** 13)
    assert sum(p["numel"] for p in data["params"]) == 5_717_416  # ViT-Ti/16 with a 1000-class head


def test_hf_config_json(capsys, tmp_path):
    pytest.importorskip("transformers")
    config = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
              "intermediate_size": 37, "vocab_size": 100}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code, out, err = run(capsys, "explain", str(path), "--json")
    assert code == 0, err
    data = json.loads(out)
    names = [p["name"] for p in data["params"]]
    assert "embeddings.word_embeddings.weight" in names
    assert data["num_layers"] == 3 + 2  # embeddings, 3 encoder layers, pooler on top
    assert data["params"][names.index("embeddings.word_embeddings.weight")]["layer_id"] == 0


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_python_dash_m_exit_codes():
    ok = _python("-m", "layerdecay", "explain", NET, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["num_layers"] == 5
    bad = _python("-m", "layerdecay", "explain", NET, "--layer-decay", "-1")
    assert bad.returncode == 2 and "--layer-decay" in bad.stderr


def test_import_does_not_load_rich_or_matplotlib():
    code = "import sys, layerdecay; print(sorted(m for m in ('rich', 'matplotlib') if m in sys.modules))"
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_rules_file_feeds_explain_and_flags_win(tmp_path, capsys):
    rules = tmp_path / "rules.toml"
    rules.write_text('layer_decay = 0.5\nweight_decay = 0.1\nno_weight_decay = ["head.weight"]\n')
    spec = "tests.models:TinyNet"
    assert main(["explain", spec, "--rules", str(rules), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["layer_decay"] == 0.5 and data["weight_decay"] == 0.1
    head = next(p for p in data["params"] if p["name"] == "head.weight")
    assert head["weight_decay"] == 0.0 and head["reason"] == "no_weight_decay pattern 'head.weight'"
    assert main(["explain", spec, "--rules", str(rules), "--layer-decay", "0.9", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layer_decay"] == 0.9


def test_malformed_rules_file_is_a_usage_error(tmp_path, capsys):
    rules = tmp_path / "rules.toml"
    rules.write_text("layer_decay = \n")
    assert main(["explain", "tests.models:TinyNet", "--rules", str(rules)]) == 2
    assert "rules.toml" in capsys.readouterr().err
