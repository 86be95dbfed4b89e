"""Sections of bench.py in several fresh interpreters: each ratio's median and range over the runs, and the
targets held against the medians.

On a shared machine one interpreter's ratios differ from the next one's by 10-15%, same code and same hash
seed, more than some targets' margins: a single run's verdict at the edge of a target says little. The
median over runs is what a process can expect; the range says how far one strays.

    python benchmarks/runs.py                      # 5 runs of the plan and scaling sections (about 13 minutes)
    python benchmarks/runs.py --runs 7 --only plan
    python benchmarks/runs.py --quick              # a smoke run; the test suite runs it once
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # the sections, their targets and the table format

Row = dict[str, Any]

# Per section, the ratios summarized over the runs: those its targets read, and explain's beside the plan's.
RATIOS = {
    "plan": ("ours_vs_floor", "explain_vs_floor", "timm_vs_ours"),
    "build": ("ours_vs_timm",),
    "scaling": ("time_ratio", "floor_ratio", "cold_time_ratio", "cold_floor_ratio"),
}


def _label(section: str, row: Row) -> str:
    if section == "scaling":
        return "depths {}, {}".format(*row["depths"])
    return str(row["case"])


def summarize(runs: list[dict[str, Any]]) -> tuple[list[Row], dict[str, Any]]:
    """(one row per case and ratio: median, min, max over the runs; the runs' results with each ratio
    replaced by its median, in the shape of one run's results, for :func:`bench.verdicts`)."""
    rows: list[Row] = []
    medians: dict[str, Any] = {}
    for section, columns in RATIOS.items():
        found = [run[section] for run in runs if section in run]
        if not found:
            continue
        per_run = list(map(bench.rows_of, found))
        merged = []
        for k, first in enumerate(per_run[0]):
            cases = [run[k] for run in per_run]
            if len({_label(section, case) for case in cases}) != 1:
                raise ValueError(f"the runs of section {section!r} hold different cases at position {k}")
            median_row = dict(first)
            for column in (c for c in columns if c in first):  # runs of an older bench.py lack the newer ratios
                values = [case[column] for case in cases]
                median_row[column] = statistics.median(values)
                rows.append({"section": section, "case": _label(section, first), "ratio": column,
                             "median": median_row[column], "min": min(values), "max": max(values),
                             "runs": len(values)})
            merged.append(median_row)
        medians[section] = merged if isinstance(found[0], list) else merged[0]
    return rows, medians


def targets(runs: list[dict[str, Any]], medians: dict[str, Any]) -> list[Row]:
    """Each target held against the medians, with how many single runs met it on their own."""
    met_by_run = [bench.verdicts({s: run[s] for s in RATIOS if s in run}) for run in runs]
    rows = []
    for k, verdict in enumerate(bench.verdicts(medians)):
        runs_met = sum(run_verdicts[k]["met"] == "yes" for run_verdicts in met_by_run)
        rows.append({"target": verdict["target"], "case": verdict["case"], "median": verdict["value"],
                     "met_at_median": verdict["met"], "runs_met": f"{runs_met} of {len(runs)}"})
    return rows


def run_once(only: str, quick: bool, path: Path) -> dict[str, Any]:
    """One fresh interpreter's run of bench.py's sections ``only``, as its JSON results."""
    command = [sys.executable, str(Path(__file__).resolve().parent / "bench.py"), "--only", only, "--json", str(path)]
    done = subprocess.run(command + (["--quick"] if quick else []), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench.py --only {only} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="fresh interpreters (default 5, 2 with --quick)")
    parser.add_argument("--only", default="plan,scaling", help=f"sections among {', '.join(RATIOS)}")
    parser.add_argument("--quick", action="store_true", help="bench.py --quick in each run: a smoke run")
    parser.add_argument("--json", default=None, help="also write the runs and the summary to this file")
    args = parser.parse_args(argv)
    sections = args.only.split(",")
    if not set(sections) <= set(RATIOS):
        parser.error(f"--only takes sections among {', '.join(RATIOS)}; got {args.only!r}")
    count = args.runs or (2 if args.quick else 5)
    if count < 1:
        parser.error(f"--runs must be at least 1, got {count}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_once(args.only, args.quick, Path(tmp) / f"run{k}.json") for k in range(count)]
    rows, medians = summarize(runs)
    verdicts = targets(runs, medians)
    print(f"machine: {runs[0]['machine']}; {count} fresh interpreters, each running bench.py --only {args.only}"
          + (" --quick (small models: the figures say little)" if args.quick else ""))
    print("\nratios over the runs")
    print(bench.table(rows, ["section", "case", "ratio", "median", "min", "max", "runs"]))
    print("\ntargets, against the medians")
    print(bench.table(verdicts, ["target", "case", "median", "met_at_median", "runs_met"]))
    result = {"machine": runs[0]["machine"], "runs": runs, "ratios": rows, "targets": verdicts}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
