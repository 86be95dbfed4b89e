"""The benchmark suite runs (quick mode) so it never rots; its numbers are reported, never asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_and_reports_every_section(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"plan", "build", "scaling", "imports", "step", "memory"} <= set(data)
    for row in data["plan"]:
        assert row["tensors"] > 0 and row["ours_ms"] > 0 and row["timm_ms"] > 0 and row["floor_ms"] > 0
        assert row["our_groups"] > 0 and row["nwd_ms"] >= 0
    assert data["scaling"]["floor_ratio"] > 0
    assert data["imports"]["heavy_modules_after_plan_and_discovery"] == "[]"
    assert data["memory"]["meta_tensors"] == data["memory"]["tensors"]
    assert "plan time" in result.stdout and "scaling" in result.stdout and "targets" in result.stdout
    # One verdict per plan case and plan target, each a plain yes or no.
    plan_targets = {"plan <= 2x the floor", "plan >= 2x faster than timm"}
    plan_verdicts = [v for v in data["targets"] if v["target"] in plan_targets]
    assert len(plan_verdicts) == 2 * len(data["plan"])
    assert {v["met"] for v in data["targets"]} <= {"yes", "no"}


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verdicts_hold_each_case_against_its_limit():
    bench = _bench_module()
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
    # Sections this run did not measure give no verdict rather than a guess.
    assert not any(target.startswith(("build", "step")) for target, _ in met)
    at_limit = bench.verdicts({"memory": {"depth": 4000, "peak_rss_growth_mib": 50.0, "meta_tensors": 4, "tensors": 4}})
    assert [row["met"] for row in at_limit] == ["no", "yes"]  # "under 50 MiB" is strict


def test_the_twin_benchmark_runs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "twin.py"), "--quick"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    header, _, *rows = result.stdout.strip().splitlines()
    assert "twin_vs_no_twin" in header and len(rows) == 2
    assert "swin_tiny_patch4_window7_224" in rows[0] and "vit_tiny_patch16_224" in rows[1]
