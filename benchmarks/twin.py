"""What the twin saves: the plan with and without it, against the floor, in paired rounds in one process.

A module's own ``no_weight_decay()`` is asked of a twin whose ``named_parameters()`` answers from the plan's
walk (``layerdecay.policy._twin``). This script turns it off by asking the module itself instead, and times
the floor, the plan and the plan without the twin in rounds of ``--calls`` calls per variant in shuffled
order, reporting the median of the per-round ratios: on a shared machine a slow stretch then falls on all
three variants of a round alike, where separate full runs move by 15% or more.

    python benchmarks/twin.py              # Swin-L and BEiT-B (which list their own parameters), ViT-B, ConvNeXt-T
    python benchmarks/twin.py --quick      # a smoke run; the test suite runs it once
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # the floor and the models, as the main benchmark builds them

import layerdecay
from layerdecay import policy

MODELS = ("swin_large_patch4_window7_224", "beit_base_patch16_224", "vit_base_patch16_224", "convnext_tiny")


def _without_twin(view: object, path: str, module: object) -> None:
    return None


def paired(arch: str, rounds: int, calls: int) -> dict[str, object]:
    model = bench.meta_model(arch)

    def plan() -> object:
        return layerdecay.param_groups(model, lr=1e-3, layer_decay=0.75)

    with_twin = policy._twin
    variants: dict[str, tuple[Callable[[], object], Callable[..., object]]] = {
        "floor": (lambda: bench.listing(model), with_twin),
        "twin": (plan, with_twin),
        "no twin": (plan, _without_twin),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(rounds):
            for name in random.sample(list(variants), len(variants)):
                fn, policy._twin = variants[name]
                times[name].append(bench.block_median(fn, calls))
    finally:
        policy._twin = with_twin

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    return {"case": arch, "twin_vs_floor": ratio("twin", "floor"), "no_twin_vs_floor": ratio("no twin", "floor"),
            "twin_vs_no_twin": ratio("twin", "no twin"), "floor_ms": min(times["floor"]) * 1e3}


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small models, 2 rounds: a smoke run")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", layerdecay.LayerDecayWarning)
    if args.quick:
        models, rounds, calls = ("swin_tiny_patch4_window7_224", "vit_tiny_patch16_224"), 2, 2
    else:
        models, rounds, calls = MODELS, args.rounds, args.calls
    rows = [paired(arch, rounds, calls) for arch in models]
    print(bench.table(rows, ["case", "floor_ms", "twin_vs_floor", "no_twin_vs_floor", "twin_vs_no_twin"]))
    return rows


if __name__ == "__main__":
    main()
