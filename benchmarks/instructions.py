"""Instructions per plan: layerdecay against listing the parameters and against timm, counted by callgrind.

On a shared machine a plan's time moves by 10-15% from one interpreter to the next, so a change worth a few
percent cannot be told from noise by timing it. The instructions the same code executes on the same model
repeat to within a few tenths of a percent, whatever else the machine does. They are not times (a cache miss
costs hundreds of cycles, an instruction a fraction of one), so the targets stay with ``bench.py``; this script
is for telling whether a change does less work.

    python benchmarks/instructions.py                      # ViT-B, ConvNeXt-T, Swin-L (a few minutes)
    python benchmarks/instructions.py --models convnext_tiny --calls 20
    python benchmarks/instructions.py --quick              # no valgrind: the harness alone, for the test suite

Each contender runs ``--calls`` times inside one ``operator.call``, the only caller of that C function here;
callgrind counts only while inside it (``--toggle-collect``) and writes one file per call (``--dump-after``).
Needs valgrind and Python >= 3.11 (``operator.call``). ``PYTHONHASHSEED`` is fixed so that dict and set layouts,
and with them the counts, repeat.
"""

from __future__ import annotations

import argparse
import operator
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # the floor, timm's grouping and the models, as the main benchmark builds them

MODELS = ("vit_base_patch16_224", "convnext_tiny", "swin_large_patch4_window7_224")
QUICK_MODELS = ("vit_tiny_patch16_224", "convnext_atto")
CONTENDERS = ("floor", "ours", "timm")
WARM_UP_CALLS = 3
# The C function that brackets each counted loop: nothing else in a plan, torch or timm calls it.
MARKER = "_operator_call"
_call = getattr(operator, "call", lambda fn: fn())  # Python 3.10 has no operator.call: only --quick runs there


def contenders(model: object) -> dict[str, Callable[[], object]]:
    import layerdecay

    return {
        "floor": lambda: bench.listing(model),  # type: ignore[arg-type]
        "ours": lambda: layerdecay.param_groups(model, lr=1e-3, layer_decay=0.75),  # type: ignore[arg-type]
        "timm": lambda: bench.timm_groups(model),  # type: ignore[arg-type]
    }


def run_counted(models: list[str], calls: int) -> None:
    """Each contender on each model: warm-up calls, then ``calls`` calls inside one ``operator.call``."""
    import layerdecay

    warnings.simplefilter("ignore", layerdecay.LayerDecayWarning)
    for arch in models:
        fns = contenders(bench.meta_model(arch))
        for name in CONTENDERS:
            fn = fns[name]
            for _ in range(WARM_UP_CALLS):
                fn()

            def loop(fn: Callable[[], object] = fn) -> None:
                for _ in range(calls):
                    fn()

            _call(loop)


def _total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError(f"{path} holds no instruction total: not a callgrind output file?")


def count(models: list[str], calls: int) -> list[dict[str, object]]:
    """Run :func:`run_counted` under callgrind and read one total per (model, contender) from its dumps."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", "--collect-atstart=no", f"--toggle-collect={MARKER}",
            f"--dump-after={MARKER}", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--counted", "--models", ",".join(models), "--calls", str(calls),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"callgrind run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        parts = sorted(Path(tmp).glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
        totals = [_total(p) for p in parts]
    if len(totals) != len(models) * len(CONTENDERS):
        raise RuntimeError(f"expected {len(models) * len(CONTENDERS)} counted loops, callgrind wrote {len(totals)}")
    rows = []
    for k, arch in enumerate(models):
        per_call = dict(zip(CONTENDERS, (t / calls for t in totals[k * 3 : k * 3 + 3]), strict=True))
        rows.append({
            "case": arch,
            "floor_minstr": per_call["floor"] / 1e6,
            "ours_minstr": per_call["ours"] / 1e6,
            "timm_minstr": per_call["timm"] / 1e6,
            "ours_vs_floor": per_call["ours"] / per_call["floor"],
            "timm_vs_ours": per_call["timm"] / per_call["ours"],
        })
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="timm architectures, comma-separated")
    parser.add_argument("--calls", type=int, default=10, help="counted calls per contender")
    parser.add_argument("--quick", action="store_true", help="two tiny models, no valgrind: a smoke run")
    parser.add_argument("--counted", action="store_true", help=argparse.SUPPRESS)  # the run under callgrind
    args = parser.parse_args(argv)
    models = args.models.split(",")
    if args.counted or args.quick:
        if args.quick:
            models, args.calls = list(QUICK_MODELS), 1
        run_counted(models, args.calls)
        if args.quick:
            print(f"ran {len(CONTENDERS)} contenders on {', '.join(models)} without valgrind")
        return []
    if not hasattr(operator, "call"):
        parser.error("needs Python >= 3.11 (operator.call brackets the counted loops)")
    if shutil.which("valgrind") is None:
        parser.error("needs valgrind on the PATH (callgrind counts the instructions)")
    rows = count(models, args.calls)
    print(f"machine: {bench.machine()}; instructions per call (millions), {args.calls} counted calls each after "
          f"{WARM_UP_CALLS} uncounted, PYTHONHASHSEED=0")
    print(bench.table(rows, list(rows[0])))
    return rows


if __name__ == "__main__":
    main()
