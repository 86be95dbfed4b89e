"""Planning and optimizer benchmarks: layerdecay against timm and against the cost of listing parameters.

Run ``python benchmarks/bench.py`` for the full tables, ending with each performance target against the run (a
few minutes on 2 cores), ``--quick`` for a smoke run (seconds; the test suite runs it once so this file never
rots), ``--json FILE`` to keep the numbers, ``--only plan,scaling`` for some sections (``runs.py`` runs them in
several fresh interpreters and reports each ratio's median and range over the runs; ``instructions.py`` counts
instructions per plan under callgrind, for changes too small to time on a shared machine).
Every time is the fastest of a few turns' medians of ``--repeats`` calls after warm-up calls (see
:func:`median_times`), all in this one process, so the ratios compare like with like. Models are built on the
``meta`` device unless a step is timed.
"""

from __future__ import annotations

import argparse
import gc
import json
import operator
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import layerdecay

Row = dict[str, Any]


WARM_UP_CALLS = 3


TURNS = 3
# The plan cases (and the builds of small models) are quick: more turns give each contender more chances of
# an undisturbed one.
PLAN_TURNS = 7
# Above this many tensors, timm's build takes seconds a call: those builds get TURNS turns.
QUICK_BUILD_TENSORS = 10_000
STEP_PAIRS = 3


def block_median(fn: Callable[[], object], repeats: int, before: Callable[[], object] | None = None) -> float:
    """The median time of ``repeats`` calls of ``fn`` in a row, after ``WARM_UP_CALLS`` untimed ones; ``before``
    runs untimed ahead of each timed call."""
    for _ in range(WARM_UP_CALLS):
        fn()
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cache_bytes() -> int:
    """The last-level cache's size as Linux reports it (32 MiB where it does not)."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(text[:-1]) << {"K": 10, "M": 20}[text[-1]]
    except (OSError, ValueError, KeyError, IndexError):
        return 32 << 20


class CacheFlush:
    """Writes a buffer of four times the last-level cache, so that the next call finds none of its data there:
    as a one-off plan finds a model in a training script, whatever the model's size."""

    def __init__(self) -> None:
        self.buffer = bytearray(4 * _cache_bytes())
        self.zeros = bytes(len(range(0, len(self.buffer), 64)))  # one byte per cache line

    def __call__(self) -> None:
        self.buffer[::64] = self.zeros


def median_times(fns: list[Callable[[], object]], repeats: int, turns: int = TURNS,
                 before: Callable[[], object] | None = None) -> list[float]:
    """Each function's time: the median of ``repeats`` calls in a row after a warm-up, as a microbenchmark times
    one thing at a time (calls of another contender in between would evict its code and data from the caches).

    The contenders take ``turns`` turns, in order, in reverse, in order again, and each reports its fastest
    turn's median. On a shared machine a slow stretch only ever adds time, and falls on one contender's turn
    and not on the others': the least disturbed turn of each is what compares like with like.

    The garbage collector runs as it does in a training script; one collection first makes sure none is
    owed to earlier work (a collection right before a contender would leave it running cold for a while).
    """
    gc.collect()
    medians: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for turn in range(turns):
        for i in order if turn % 2 == 0 else order[::-1]:
            medians[i].append(block_median(fns[i], repeats, before))
    return [min(m) for m in medians]


def meta_model(arch: str, **kwargs: Any) -> torch.nn.Module:
    import timm

    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False, **kwargs)


def listing(model: torch.nn.Module) -> None:
    for _, p in model.named_parameters():
        p.shape  # noqa: B018  (reading the shape is part of the floor)


def timm_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    from timm.optim import param_groups_layer_decay

    nwd = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75, no_weight_decay_list=nwd)


def model_lists(model: torch.nn.Module) -> None:
    """The model's own ``no_weight_decay()``, which both timm's grouping and ours call (timm's Swin builds it
    by listing every parameter, as expensive as the floor itself)."""
    if hasattr(model, "no_weight_decay"):
        model.no_weight_decay()


def plan_case(label: str, model: torch.nn.Module, repeats: int) -> Row:
    """Plan time: param_groups against listing the parameters and against timm."""
    floor, ours, explain, theirs, lists = median_times([
        lambda: listing(model),
        lambda: layerdecay.param_groups(model, lr=1e-3, layer_decay=0.75),
        lambda: layerdecay.explain(model, layer_decay=0.75),
        lambda: timm_groups(model),
        lambda: model_lists(model),
    ], repeats, turns=PLAN_TURNS)
    plan = layerdecay.explain(model, layer_decay=0.75)
    return {
        "case": label,
        "tensors": sum(1 for _ in model.parameters()),
        "owner": plan.owner,
        "floor_ms": floor * 1e3,
        "ours_ms": ours * 1e3,
        "explain_ms": explain * 1e3,
        "timm_ms": theirs * 1e3,
        "nwd_ms": lists * 1e3,
        "ours_vs_floor": ours / floor,
        "explain_vs_floor": explain / floor,
        "timm_vs_floor": theirs / floor,
        "timm_vs_ours": theirs / ours,
        "our_groups": len(plan.groups),
        "timm_groups": len(timm_groups(model)),
    }


def bert_model(layers: int, hidden: int = 768) -> torch.nn.Module:
    """A transformers BERT classifier on the meta device: a model no family plugin claims."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=max(1, hidden // 64),
                        intermediate_size=4 * hidden)
    with torch.device("meta"):
        return BertForSequenceClassification(config)


def torchvision_model(arch: str) -> torch.nn.Module:
    """A torchvision model on the meta device (its ResNets: stages held as separate attributes)."""
    import torchvision

    with torch.device("meta"):
        return getattr(torchvision.models, arch)()


def fallback_case(label: str, model: torch.nn.Module, repeats: int) -> Row:
    """Plan time of a model that the generic fallback plans (timm's grouping puts such a model in one layer,
    so it is no reference here)."""
    floor, ours, explain = median_times([
        lambda: listing(model),
        lambda: layerdecay.param_groups(model, lr=1e-3, layer_decay=0.75),
        lambda: layerdecay.explain(model, layer_decay=0.75),
    ], repeats, turns=PLAN_TURNS)
    plan = layerdecay.explain(model, layer_decay=0.75)
    return {"case": label, "tensors": sum(1 for _ in model.parameters()), "owner": plan.owner,
            "num_layers": plan.num_layers, "floor_ms": floor * 1e3, "ours_ms": ours * 1e3,
            "explain_ms": explain * 1e3, "ours_vs_floor": ours / floor, "explain_vs_floor": explain / floor,
            "our_groups": len(plan.groups)}


def build_case(label: str, model: torch.nn.Module, repeats: int) -> Row:
    """End to end: build_optimizer against timm's create_optimizer_v2(..., layer_decay=...)."""
    from timm.optim import create_optimizer_v2

    quick = sum(1 for _ in model.parameters()) < QUICK_BUILD_TENSORS
    ours, theirs = median_times([
        lambda: layerdecay.build_optimizer(model, "adamw", lr=1e-3, layer_decay=0.75),
        lambda: create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75),
    ], repeats, turns=PLAN_TURNS if quick else TURNS)
    return {"case": label, "ours_ms": ours * 1e3, "timm_ms": theirs * 1e3, "ours_vs_timm": ours / theirs,
            "groups": len(layerdecay.explain(model).groups)}


def scaling(depths: tuple[int, int], repeats: int) -> Row:
    """The plan's growth from the small depth to the large one, and the floor's, timed twice: calls in a row
    (``time_ratio``: the small model's objects stay in the last-level cache from one call to the next, the large
    one's cannot) and each call after the cache is flushed (``cold_time_ratio``: both as a one-off plan finds
    them, which tells growth in the work from the cache's size)."""
    small, large = (meta_model("vit_base_patch16_224", depth=d) for d in depths)
    contenders = [
        lambda: layerdecay.param_groups(small, lr=1e-3),
        lambda: layerdecay.param_groups(large, lr=1e-3),
        lambda: listing(small),
        lambda: listing(large),
    ]
    t_small, t_large, f_small, f_large = median_times(contenders, repeats, turns=PLAN_TURNS)
    c_small, c_large, cf_small, cf_large = median_times(contenders, repeats, turns=PLAN_TURNS, before=CacheFlush())
    tensors = (sum(1 for _ in small.parameters()), sum(1 for _ in large.parameters()))
    return {"depths": list(depths), "tensors": list(tensors), "small_ms": t_small * 1e3, "large_ms": t_large * 1e3,
            "time_ratio": t_large / t_small, "size_ratio": tensors[1] / tensors[0], "floor_ratio": f_large / f_small,
            "cold_small_ms": c_small * 1e3, "cold_large_ms": c_large * 1e3, "cold_time_ratio": c_large / c_small,
            "cold_floor_ratio": cf_large / cf_small}


def _with_bytecode_cache() -> dict[str, str]:
    """The environment with Python's bytecode cache on: an installed package is byte-compiled once (``pip``
    does it at install time), so timing an import that compiles its sources afresh measures the compiler."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _subprocess_median(code: str, repeats: int) -> float:
    """The median time a fresh interpreter reports for ``code``, after one untimed run that fills the cache."""
    times = []
    env = _with_bytecode_cache()
    for _ in range(repeats + 1):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        times.append(float(out.stdout.strip()))
    return statistics.median(times[1:])


def import_costs(repeats: int) -> Row:
    """Fresh interpreters: import torch alone, torch then layerdecay, and plugin discovery."""
    clock = "import time; t = time.perf_counter(); "
    ours = _subprocess_median("import torch; " + clock + "import layerdecay; print(time.perf_counter() - t)", repeats)
    discovery = _subprocess_median(
        "import torch, layerdecay; " + clock + "layerdecay.create_plugin_host(); print(time.perf_counter() - t)",
        repeats,
    )
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, torch, layerdecay; m = torch.nn.Linear(2, 2); "
         "layerdecay.build_optimizer(m, 'adamw', lr=0.1, layer_decay=1.0); layerdecay.create_plugin_host(); "
         "print(sorted(x for x in ('timm', 'torchvision', 'transformers') if x in sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    return {"import_layerdecay_after_torch_ms": ours * 1e3, "plugin_discovery_ms": discovery * 1e3,
            "heavy_modules_after_plan_and_discovery": heavy}


def _model_with_grads(arch: str, depth: int, device: str) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, depth=depth).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    return model


def step_devices() -> list[str]:
    """The CPU, and the GPU when there is one: the step is timed on each."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _timed_step(optimizer: torch.optim.Optimizer, device: str) -> Callable[[], None]:
    """``optimizer.step`` as a call that returns when the step is done (a GPU's kernels run asynchronously)."""
    if device == "cpu":
        return optimizer.step

    def step() -> None:
        optimizer.step()
        torch.cuda.synchronize()
    return step


def _step_times(model: torch.nn.Module, impl: str, repeats: int, device: str) -> tuple[float, float, int]:
    """(single-group step, step with the plan's groups, the group count) for AdamW with ``impl``.

    Where the optimizer state lands in memory changes a CPU step's time by up to 2x here, whatever the groups:
    the pair of optimizers is built afresh (new state) a few times, each pair is timed in turns, and each
    optimizer keeps its fastest turn.
    """
    flags = {impl: True}
    times: list[list[float]] = [[], []]
    for _ in range(STEP_PAIRS):
        single = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, **flags)
        grouped = layerdecay.build_optimizer(model, "adamw", lr=1e-3, layer_decay=0.75, **flags)
        steps = [_timed_step(single, device), _timed_step(grouped, device)]
        for out, t in zip(times, median_times(steps, repeats), strict=True):
            out.append(t)
        groups = len(grouped.param_groups)
        del single, grouped
    return min(times[0]), min(times[1]), groups


def step_case(depth: int, repeats: int, device: str = "cpu") -> list[Row]:
    """AdamW step time with the plan's groups against a single group (ViT-B, on ``device``).

    torch steps each param group on its own, a fixed cost per group. That cost is also measured apart, on
    ViT-Ti with the same groups (its step is a seventh of ViT-B's, so memory placement moves it far less),
    and laid over ViT-B's step: ``groups_cost_ratio`` is the ratio the groups alone account for.
    """
    model = _model_with_grads("vit_base_patch16_224", depth, device)
    small = _model_with_grads("vit_tiny_patch16_224", depth, device)
    card = "CPU" if device == "cpu" else torch.cuda.get_device_name(device)
    rows = []
    for impl in ("foreach", "fused"):
        t_single, t_grouped, groups = _step_times(model, impl, repeats, device)
        small_single, small_grouped, small_groups = _step_times(small, impl, repeats, device)
        per_group = (small_grouped - small_single) / (small_groups - 1) if small_groups > 1 else 0.0
        rows.append({"impl": impl, "device": card, "depth": depth, "single_ms": t_single * 1e3,
                     "grouped_ms": t_grouped * 1e3,
                     "ratio": t_grouped / t_single, "groups": groups, "timm_groups": len(timm_groups(model)),
                     "per_group_us": per_group * 1e6, "groups_cost_ratio": 1 + (groups - 1) * per_group / t_single})
    return rows


def memory_case(depth: int) -> Row:
    """Peak RSS growth of planning a meta-device model, in a fresh process."""
    code = (
        "import resource, torch, timm, layerdecay, warnings\n"
        "warnings.simplefilter('ignore')\n"
        f"with torch.device('meta'): m = timm.create_model('vit_base_patch16_224', pretrained=False, depth={depth})\n"
        "layerdecay.create_plugin_host()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "plan = layerdecay.explain(m); groups = plan.param_groups(1e-3)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) / 1024, sum(p.is_meta for p in plan.parameters), len(plan.parameters))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"depth": depth, "peak_rss_growth_mib": float(out[0]), "meta_tensors": int(out[1]), "tensors": int(out[2])}


# Each section of a run: its title and the columns of its table (None: every field of its one row).
SECTIONS: dict[str, tuple[str, list[str] | None]] = {
    "plan": ("plan time (param_groups; floor = listing named_parameters and reading shapes)",
             ["case", "tensors", "owner", "floor_ms", "ours_ms", "timm_ms", "nwd_ms", "ours_vs_floor",
              "explain_vs_floor", "timm_vs_floor", "timm_vs_ours", "our_groups", "timm_groups"]),
    "fallback": ("plan time of models no plugin claims (the generic fallback's repeated blocks)",
                 ["case", "tensors", "owner", "num_layers", "floor_ms", "ours_ms", "ours_vs_floor", "explain_vs_floor",
                  "our_groups"]),
    "build": ("build_optimizer end to end against timm's create_optimizer_v2(..., layer_decay=0.75)",
              ["case", "groups", "ours_ms", "timm_ms", "ours_vs_timm"]),
    "scaling": ("scaling (calls in a row, then each call after the last-level cache is flushed: cold_)",
                ["depths", "tensors", "small_ms", "large_ms", "time_ratio", "floor_ratio", "cold_small_ms",
                 "cold_large_ms", "cold_time_ratio", "cold_floor_ratio", "size_ratio"]),
    "imports": ("imports (fresh interpreters)", None),
    "step": ("optimizer step, ViT-B/16: the plan's groups against one group",
             ["impl", "device", "depth", "groups", "timm_groups", "single_ms", "grouped_ms", "ratio", "per_group_us",
              "groups_cost_ratio"]),
    "memory": ("memory", None),
}


def rows_of(found: Row | list[Row]) -> list[Row]:
    """A section's rows: a list of cases, or the one row of a section with a single case."""
    return found if isinstance(found, list) else [found]


# The performance targets (docs/performance.md): (section, field, the target's words, how the field must
# compare with the limit, the limit).
TARGETS = (
    ("plan", "ours_vs_floor", "plan <= 2x the floor", operator.le, 2.0),
    ("plan", "timm_vs_ours", "plan >= 2x faster than timm", operator.ge, 2.0),
    ("build", "ours_vs_timm", "build_optimizer <= 0.5x timm's", operator.le, 0.5),
    ("scaling", "time_ratio", "10x the tensors in <= 12x the time", operator.le, 12.0),
    ("scaling", "cold_time_ratio", "10x the tensors in <= 12x the time, cold caches", operator.le, 12.0),
    ("imports", "import_layerdecay_after_torch_ms", "import layerdecay <= 100 ms over torch", operator.le, 100.0),
    ("imports", "plugin_discovery_ms", "plugin discovery <= 20 ms", operator.le, 20.0),
    ("step", "ratio", "step <= 1.05x a single group", operator.le, 1.05),
    ("step", "groups_cost_ratio", "step: torch's cost of the groups <= 1.05x", operator.le, 1.05),
    ("memory", "peak_rss_growth_mib", "peak RSS growth of a plan < 50 MiB", operator.lt, 50.0),
)


def _case(section: str, column: str, row: Row) -> str:
    """What a verdict row is about, in the words of its section's table."""
    if section == "step":
        device = row.get("device", "CPU")
        return row["impl"] if device == "CPU" else f"{row['impl']} on {device}"
    if section == "scaling":
        small, large = row["depths"]
        floor = row["cold_floor_ratio" if column.startswith("cold_") else "floor_ratio"]
        return f"depths {small}, {large} (the floor alone: {floor:.3g}x)"
    if section == "memory":
        return f"depth {row['depth']}"
    return str(row.get("case", ""))


def verdicts(results: dict[str, Any]) -> list[Row]:
    """Each target against this run, one row per case: what a run shows at a glance (the ranges over several
    runs, which a shared machine needs, are in docs/performance.md). A missing section or field is left out."""
    rows = []
    for section, column, target, holds, limit in TARGETS:
        found = results.get(section)
        for row in rows_of(found) if found else []:
            if column not in row:
                continue
            value = row[column]
            rows.append({"target": target, "case": _case(section, column, row), "value": value,
                         "met": "yes" if holds(value, limit) else "no"})
    imports = results.get("imports")
    if imports:
        heavy = imports["heavy_modules_after_plan_and_discovery"]
        rows.append({"target": "timm, torchvision, transformers stay unimported", "case": "", "value": heavy,
                     "met": "yes" if heavy == "[]" else "no"})
    memory = results.get("memory")
    if memory:
        all_meta = memory["meta_tensors"] == memory["tensors"]
        rows.append({"target": "planning a meta model allocates no parameter memory", "case": "",
                     "value": f"{memory['meta_tensors']} of {memory['tensors']} on meta",
                     "met": "yes" if all_meta else "no"})
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def table(rows: list[Row], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, 1 repeat: a smoke run")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"the sections to run, comma-separated (default: all of {', '.join(SECTIONS)})")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if not only <= set(SECTIONS):
        parser.error(f"--only takes sections among {', '.join(SECTIONS)}; got {args.only!r}")
    warnings.simplefilter("ignore", layerdecay.LayerDecayWarning)
    repeats = args.repeats or (1 if args.quick else 7)
    gc.collect()

    if args.quick:
        plan_models = [("vit_tiny_patch16_224", {}), ("convnext_atto", {}), ("vit_tiny_patch16_224", {"depth": 50})]
        build_models = plan_models[:1]
        depths, step_depth, memory_depth = (20, 80), 1, 100
        fallback_models = [("BERT 2 layers, width 32", lambda: bert_model(layers=2, hidden=32)),
                           ("torchvision resnet18", lambda: torchvision_model("resnet18"))]
    else:
        plan_models = [
            ("vit_base_patch16_224", {}), ("convnext_tiny", {}), ("swin_large_patch4_window7_224", {}),
            ("vit_giant_patch14_224", {}), ("eva02_large_patch14_224", {}), ("vit_base_patch16_224", {"depth": 1000}),
        ]
        build_models = [("vit_base_patch16_224", {}), ("convnext_tiny", {}), ("vit_base_patch16_224", {"depth": 1000})]
        depths, step_depth, memory_depth = (400, 4000), 12, 4000
        fallback_models = [("BERT-base (transformers)", lambda: bert_model(layers=12)),
                           ("BERT 192 layers", lambda: bert_model(layers=192)),
                           ("torchvision resnet50", lambda: torchvision_model("resnet50"))]

    def label(arch: str, kw: dict[str, Any]) -> str:
        return arch + "".join(f" {k}={v}" for k, v in kw.items())

    results: dict[str, Any] = {"machine": machine(), "repeats": repeats, "quick": args.quick}
    if "plan" in only:
        results["plan"] = [plan_case(label(a, kw), meta_model(a, **kw), repeats) for a, kw in plan_models]
    if "fallback" in only:
        results["fallback"] = [fallback_case(case, build(), repeats) for case, build in fallback_models]
    if "build" in only:
        results["build"] = [build_case(label(a, kw), meta_model(a, **kw), repeats) for a, kw in build_models]
    if "scaling" in only:
        results["scaling"] = scaling(depths, repeats)
    if "imports" in only:
        results["imports"] = import_costs(max(1, min(repeats, 5)))
    if "step" in only:
        results["step"] = [row for device in step_devices() for row in step_case(step_depth, repeats, device)]
    if "memory" in only:
        results["memory"] = memory_case(memory_depth)

    print(f"machine: {results['machine']}; per contender the fastest of {PLAN_TURNS} turns' medians (plans, "
          f"scaling and the builds of models under {QUICK_BUILD_TENSORS:,} tensors; {TURNS} turns elsewhere) "
          f"of {repeats} calls, each after {WARM_UP_CALLS} untimed")
    for section, (title, columns) in SECTIONS.items():
        if section in results:
            rows = rows_of(results[section])
            print(f"\n{title}")
            print(table(rows, columns or list(rows[0])))
    results["targets"] = verdicts(results)
    if results["targets"]:  # a run of sections without a target (``--only fallback``) has none
        quick_note = " (quick: small models, so the figures say little)" if args.quick else ""
        print(f"\ntargets, against this run{quick_note}")
        print(table(results["targets"], ["target", "case", "value", "met"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
