"""The benchmark suite runs (quick mode) so it never rots; its numbers are reported, never asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_and_reports_every_section(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"plan", "fallback", "build", "scaling", "imports", "step", "memory"} <= set(data)
    for row in data["plan"]:
        assert row["tensors"] > 0 and row["ours_ms"] > 0 and row["timm_ms"] > 0 and row["floor_ms"] > 0
        assert row["our_groups"] > 0 and row["nwd_ms"] >= 0
    for row in data["fallback"]:  # a model no family plugin claims, planned by its repeated blocks
        assert row["owner"] == "generic" and row["num_layers"] > 2 and row["ours_ms"] > 0 and row["floor_ms"] > 0
    assert data["scaling"]["floor_ratio"] > 0 and data["scaling"]["cold_floor_ratio"] > 0
    assert data["scaling"]["cold_small_ms"] > 0 and data["scaling"]["cold_time_ratio"] > 0
    assert data["imports"]["heavy_modules_after_plan_and_discovery"] == "[]"
    assert data["memory"]["meta_tensors"] == data["memory"]["tensors"]
    assert {row["device"] for row in data["step"]} >= {"CPU"}
    assert "plan time" in result.stdout and "scaling" in result.stdout and "targets" in result.stdout
    # One verdict per plan case and plan target, each a plain yes or no.
    plan_targets = {"plan <= 2x the floor", "plan >= 2x faster than timm"}
    plan_verdicts = [v for v in data["targets"] if v["target"] in plan_targets]
    assert len(plan_verdicts) == 2 * len(data["plan"])
    assert {v["met"] for v in data["targets"]} <= {"yes", "no"}


def _benchmark_module(name: str):
    """A script of benchmarks/ imported as a module (runs.py puts the folder on the path to import bench)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verdicts_hold_each_case_against_its_limit():
    bench = _benchmark_module("bench")
    plan = [{"case": "fast", "ours_vs_floor": 1.9, "timm_vs_ours": 2.5},
            {"case": "slow", "ours_vs_floor": 2.1, "timm_vs_ours": 1.9},
            {"case": "edge", "ours_vs_floor": 2.0, "timm_vs_ours": 2.0}]
    results = {
        "plan": plan,
        "scaling": {"depths": [400, 4000], "time_ratio": 12.5, "floor_ratio": 13.0},
        "imports": {"import_layerdecay_after_torch_ms": 12.0, "plugin_discovery_ms": 25.0,
                    "heavy_modules_after_plan_and_discovery": "['timm']"},
        "memory": {"depth": 4000, "peak_rss_growth_mib": 0.0, "meta_tensors": 3, "tensors": 4},
    }
    met = {(row["target"], row["case"]): row["met"] for row in bench.verdicts(results)}
    assert met[("plan <= 2x the floor", "fast")] == "yes"
    assert met[("plan <= 2x the floor", "slow")] == "no"
    assert met[("plan >= 2x faster than timm", "fast")] == "yes"
    assert met[("plan >= 2x faster than timm", "slow")] == "no"
    # A limit itself meets an "at most" or "at least" target.
    assert met[("plan <= 2x the floor", "edge")] == met[("plan >= 2x faster than timm", "edge")] == "yes"
    assert met[("10x the tensors in <= 12x the time", "depths 400, 4000 (the floor alone: 13x)")] == "no"
    assert met[("import layerdecay <= 100 ms over torch", "")] == "yes"
    assert met[("plugin discovery <= 20 ms", "")] == "no"
    assert met[("timm, torchvision, transformers stay unimported", "")] == "no"
    assert met[("peak RSS growth of a plan < 50 MiB", "depth 4000")] == "yes"
    assert met[("planning a meta model allocates no parameter memory", "")] == "no"
    # Sections and fields this run did not measure give no verdict rather than a guess.
    assert not any(target.startswith(("build", "step")) for target, _ in met)
    assert not any(target.endswith("cold caches") for target, _ in met)
    cold = {"depths": [400, 4000], "time_ratio": 13.0, "floor_ratio": 13.5, "cold_time_ratio": 11.0,
            "cold_floor_ratio": 10.5}
    cold_met = {(row["target"], row["case"]): row["met"] for row in bench.verdicts({"scaling": cold})}
    assert cold_met == {
        ("10x the tensors in <= 12x the time", "depths 400, 4000 (the floor alone: 13.5x)"): "no",
        ("10x the tensors in <= 12x the time, cold caches", "depths 400, 4000 (the floor alone: 10.5x)"): "yes",
    }
    at_limit = bench.verdicts({"memory": {"depth": 4000, "peak_rss_growth_mib": 50.0, "meta_tensors": 4, "tensors": 4}})
    assert [row["met"] for row in at_limit] == ["no", "yes"]  # "under 50 MiB" is strict


def test_step_verdicts_name_the_card_a_gpu_step_ran_on():
    bench = _benchmark_module("bench")
    rows = [{"impl": "fused", "device": "CPU", "ratio": 1.01, "groups_cost_ratio": 1.0},
            {"impl": "fused", "device": "NVIDIA H100 80GB HBM3", "ratio": 1.2, "groups_cost_ratio": 1.1}]
    met = {(row["target"], row["case"]): row["met"] for row in bench.verdicts({"step": rows})}
    assert met[("step <= 1.05x a single group", "fused")] == "yes"
    assert met[("step <= 1.05x a single group", "fused on NVIDIA H100 80GB HBM3")] == "no"
    assert bench.step_devices()[0] == "cpu"


def test_the_twin_benchmark_runs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "twin.py"), "--quick"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    header, _, *rows = result.stdout.strip().splitlines()
    assert "twin_vs_no_twin" in header and len(rows) == 2
    assert "swin_tiny_patch4_window7_224" in rows[0] and "vit_tiny_patch16_224" in rows[1]


def test_the_instruction_count_harness_runs():
    # --quick runs the counted loops without valgrind (a callgrind run takes minutes): the harness cannot rot.
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "instructions.py"), "--quick"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ran 3 contenders on vit_tiny_patch16_224, convnext_atto" in result.stdout


def test_instruction_totals_are_read_from_callgrind_files(tmp_path):
    instructions = _benchmark_module("instructions")
    part = tmp_path / "callgrind.out.1"
    part.write_text("# callgrind format\nversion: 1\nevents: Ir\nsummary: 30654939\n\nfn=main\n0 5\n")
    assert instructions._total(part) == 30654939
    empty = tmp_path / "callgrind.out.2"
    empty.write_text("# callgrind format\nevents: Ir\n")
    with pytest.raises(ValueError, match="no instruction total"):
        instructions._total(empty)


def _plan_run(ours_vs_floor: float, timm_vs_ours: float) -> dict:
    return {"plan": [{"case": "vit", "ours_vs_floor": ours_vs_floor, "explain_vs_floor": 1.0,
                      "timm_vs_ours": timm_vs_ours}],
            "scaling": {"depths": [400, 4000], "time_ratio": 11.0, "floor_ratio": 12.0}}


def test_runs_summary_takes_each_ratios_median_and_range_and_counts_the_runs_that_met_a_target():
    runs = _benchmark_module("runs")
    results = [_plan_run(2.3, 2.5), _plan_run(1.8, 1.9), _plan_run(1.9, 2.2)]
    rows, medians = runs.summarize(results)
    floor = next(r for r in rows if r["case"] == "vit" and r["ratio"] == "ours_vs_floor")
    assert (floor["median"], floor["min"], floor["max"], floor["runs"]) == (1.9, 1.8, 2.3, 3)
    assert medians["plan"][0]["timm_vs_ours"] == 2.2 and medians["scaling"]["time_ratio"] == 11.0
    verdicts = {row["target"]: row for row in runs.targets(results, medians)}
    assert verdicts["plan <= 2x the floor"]["met_at_median"] == "yes"
    assert verdicts["plan <= 2x the floor"]["runs_met"] == "2 of 3"
    assert verdicts["plan >= 2x faster than timm"]["runs_met"] == "2 of 3"
    assert verdicts["10x the tensors in <= 12x the time"]["met_at_median"] == "yes"


def test_runs_summary_refuses_runs_of_different_cases():
    runs = _benchmark_module("runs")
    other = _plan_run(1.0, 3.0)
    other["plan"][0]["case"] = "convnext"
    with pytest.raises(ValueError, match="different cases"):
        runs.summarize([_plan_run(1.0, 3.0), other])


def test_the_runs_benchmark_runs(tmp_path):
    out = tmp_path / "runs.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "runs.py"), "--quick", "--runs", "1", "--only", "plan",
         "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert len(data["runs"]) == 1 and {row["section"] for row in data["ratios"]} == {"plan"}
    assert "targets, against the medians" in result.stdout
