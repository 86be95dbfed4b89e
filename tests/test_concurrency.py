"""Planning from several threads at once: same results as one at a time, no leaks between calls.

What is and is not safe is written down in docs/errors.md ("Threads").
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import layerdecay
from layerdecay import hookimpl

pytestmark = pytest.mark.filterwarnings("ignore::layerdecay.LayerDecayWarning")

WORKERS = 8


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


class Net(nn.Module):
    def __init__(self, depth: int = 6) -> None:
        super().__init__()
        self.embed = nn.Linear(2, 4)
        self.blocks = nn.ModuleList([Block() for _ in range(depth)])
        self.head = nn.Linear(4, 2)


class Pairs:
    """Claims Net: two blocks per layer id (the generic fallback gives one per block)."""

    __name__ = "pairs"

    @hookimpl
    def layerdecay_num_layers(self, model):
        return (len(model.model.blocks) + 1) // 2 + 2 if isinstance(model.model, Net) else None

    @hookimpl
    def layerdecay_layer_id(self, model, num_layers):
        def layer_id(name: str) -> int:
            if name.startswith("blocks."):
                return int(name.split(".")[1]) // 2 + 1
            return 0 if name.startswith("embed.") else num_layers - 1

        return layer_id if isinstance(model.model, Net) else None


class Constant:
    """Overrides the scale: every layer gets ``value`` (a per-call rule that must not leak)."""

    def __init__(self, value: float) -> None:
        self.__name__ = f"constant-{value:g}"
        self.value = value

    @hookimpl
    def layerdecay_lr_scale(self, num_layers):
        return [self.value] * num_layers


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default host without the installed plugins (and restored afterwards)."""
    monkeypatch.setenv("LAYERDECAY_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("LAYERDECAY_PLUGINS", raising=False)
    yield
    layerdecay.unregister(PAIRS)


PAIRS = Pairs()


def test_many_threads_same_plans_as_one_thread():
    host = layerdecay.create_plugin_host(autoload=False)
    models = [Net(depth) for depth in range(1, 9)]
    with torch.device("meta"):
        models += [Net(depth) for depth in range(1, 9)]
    expected = [layerdecay.explain(m, host=host).to_json() for m in models]
    with ThreadPoolExecutor(WORKERS) as pool:
        got = list(pool.map(lambda i: layerdecay.explain(models[i % 16], host=host).to_json(), range(160)))
    assert got == [expected[i % 16] for i in range(160)]


def test_one_model_planned_from_many_threads():
    host = layerdecay.create_plugin_host(autoload=False)
    model = Net()
    reference = layerdecay.param_groups(model, lr=1.0, host=host)

    def build(_: int) -> list[tuple[str, float, float, list[int]]]:
        groups = layerdecay.param_groups(model, lr=1.0, host=host)
        return [(g["group_name"], g["lr"], g["weight_decay"], [id(p) for _, p in g["params"]]) for g in groups]

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(build, range(64)))
    expected = [(g["group_name"], g["lr"], g["weight_decay"], [id(p) for _, p in g["params"]]) for g in reference]
    assert all(r == expected for r in results)


def test_build_optimizer_from_many_threads():
    host = layerdecay.create_plugin_host(autoload=False)
    models = [Net() for _ in range(WORKERS)]
    with ThreadPoolExecutor(WORKERS) as pool:
        optimizers = list(pool.map(lambda m: layerdecay.build_optimizer(m, "adamw", lr=1e-3, host=host), models))
    for model, optimizer in zip(models, optimizers, strict=True):
        placed = [id(p) for g in optimizer.param_groups for p in g["params"]]
        assert sorted(placed) == sorted(id(p) for p in model.parameters())


def test_per_call_plugins_do_not_leak_across_threads():
    host = layerdecay.create_plugin_host(autoload=False)
    model = Net()
    default = layerdecay.explain(model, host=host).scales

    def plan(i: int) -> tuple[int, tuple[float, ...]]:
        if i % 3 == 0:
            return i, layerdecay.explain(model, host=host).scales
        value = (i % 7 + 1) / 8
        return i, layerdecay.explain(model, host=host, plugins=[Constant(value)]).scales

    with ThreadPoolExecutor(WORKERS) as pool:
        for i, scales in pool.map(plan, range(210)):
            if i % 3 == 0:
                assert scales == default
            else:
                assert scales == ((i % 7 + 1) / 8,) * len(default)


def test_register_and_unregister_while_other_threads_plan(isolated):
    model = Net()
    without = layerdecay.explain(model).to_json()
    layerdecay.register(PAIRS)
    with_rule = layerdecay.explain(model).to_json()
    layerdecay.unregister(PAIRS)
    assert without != with_rule

    stop = threading.Event()

    def toggle() -> int:
        flips = 0
        while not stop.is_set():
            layerdecay.register(PAIRS)
            layerdecay.unregister(PAIRS)
            flips += 1
        return flips

    def plan(i: int) -> str:
        if i % 4 == 0:
            return layerdecay.explain(model, plugins=[Constant(0.5)]).to_json()
        return layerdecay.explain(model).to_json()

    with ThreadPoolExecutor(WORKERS) as pool:
        togglers = [pool.submit(toggle) for _ in range(2)]
        results = list(pool.map(plan, range(120)))
        stop.set()
        assert all(t.result() > 0 for t in togglers)
    constant = {layerdecay.explain(model, plugins=[Constant(0.5)]).to_json()}
    layerdecay.register(PAIRS)
    constant.add(layerdecay.explain(model, plugins=[Constant(0.5)]).to_json())
    layerdecay.unregister(PAIRS)
    for i, result in enumerate(results):
        # each call sees the rule or not, as a whole: never a mix, never an error
        assert result in (constant if i % 4 == 0 else {without, with_rule})


def test_registration_does_not_change_a_plan_in_flight(isolated):
    """A call plans with the plugins registered when it started, even if others register meanwhile."""
    model = Net()
    entered, release = threading.Event(), threading.Event()

    class Gate:
        __name__ = "gate"

        @hookimpl
        def layerdecay_num_layers(self, model):
            entered.set()
            assert release.wait(10)
            return None

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(layerdecay.explain, model, plugins=[Gate()])
        assert entered.wait(10)
        layerdecay.register(PAIRS)
        release.set()
        in_flight = future.result(timeout=10)
    assert in_flight.owner == "generic"
    assert layerdecay.explain(model).owner == "pairs"


def test_hosts_created_concurrently_are_equal():
    with ThreadPoolExecutor(WORKERS) as pool:
        hosts = list(pool.map(lambda _: layerdecay.create_plugin_host(), range(16)))
    listings = {tuple(hosts_.plugins) for hosts_ in hosts}
    assert len(listings) == 1
