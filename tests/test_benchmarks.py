"""The benchmark suite runs (quick mode) so it never rots; its numbers are reported, never asserted."""

from __future__ import annotations

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
    assert "plan time" in result.stdout and "scaling" in result.stdout
