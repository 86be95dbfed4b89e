"""Plugin discovery and control, with fake installed distributions in a subprocess.

A temporary directory holds ``*.dist-info`` folders (METADATA + entry_points.txt, group ``layerdecay``) and
the plugin modules; it goes on ``PYTHONPATH`` of a fresh interpreter, which sees them exactly as installed
distributions. The family plugins really installed in the environment are blocked there, so that only the
fakes decide. Three fakes:

- ``fakefam`` (layerdecay-fakefam 1.2.3): a good family plugin whose layer ids differ from the fallback's;
- ``brokenfam`` (layerdecay-brokenfam 0.0.1): raises at import (a missing native library);
- ``typofam`` (layerdecay-typofam 2.0): declares a hook that does not exist (``layerdecay_num_layer``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

FAKEFAM = '''
from layerdecay import hookimpl, select_recipe

RECIPES = ("pairs", "timm")


def _mine(view):
    return type(view.model).__name__ == "FakeNet"


@hookimpl
def layerdecay_num_layers(model, recipe):
    if not _mine(model):
        return None
    select_recipe(recipe, RECIPES, owner="the fakefam plugin")
    return (len(model.model.blocks) + 1) // 2 + 2


@hookimpl
def layerdecay_layer_id(model, num_layers):
    if not _mine(model):
        return None

    def layer_id(name):
        if name.startswith("blocks."):
            return int(name.split(".")[1]) // 2 + 1  # two blocks per layer id
        return 0 if name.startswith("stem.") else num_layers - 1

    return layer_id
'''

BROKENFAM = '''
import builtins

builtins.__dict__.setdefault("_layerdecay_test_imports", []).append("brokenfam")
raise RuntimeError("libfakefam.so: cannot open shared object file")
'''

TYPOFAM = '''
from layerdecay import hookimpl


@hookimpl
def layerdecay_num_layer(model):
    return None
'''

FAKES = {
    # entry point name: (distribution, version, module source)
    "fakefam": ("layerdecay-fakefam", "1.2.3", FAKEFAM),
    "brokenfam": ("layerdecay-brokenfam", "0.0.1", BROKENFAM),
    "typofam": ("layerdecay-typofam", "2.0", TYPOFAM),
}

# The script run in the subprocess: it records what it sees; the assertions are made here, in pytest.
DRIVER = '''
import builtins, json, os, sys, warnings
import torch
from torch import nn
import layerdecay

REAL = os.environ["TEST_REAL_PLUGINS"]
out = {}


class FakeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(2, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(4)])
        self.head = nn.Linear(4, 2)


def attempt(fn, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            plan = fn(FakeNet(), **kwargs)
        except layerdecay.LayerDecayError as exc:
            return {"error": type(exc).__name__, "message": str(exc), "plugin": getattr(exc, "plugin", None)}
    return {"owner": plan.owner, "num_layers": plan.num_layers, "ids": {r.name: r.layer_id for r in plan.rows},
            "scales": list(plan.scales), "decay": {r.name: r.weight_decay for r in plan.rows},
            "warnings": [str(w.message) for w in caught]}


def infos(host):
    return {p.name: [p.source, p.distribution, p.version, p.status, p.error, list(p.hooks)] for p in host.plugins}


def imports():
    attempted = list(builtins.__dict__.get("_layerdecay_test_imports", []))
    return attempted + (["typofam"] if "ld_test_typofam" in sys.modules else [])


def setenv(**values):
    for key in ("LAYERDECAY_PLUGINS", "LAYERDECAY_DISABLE_PLUGINS", "LAYERDECAY_DISABLE_PLUGIN_AUTOLOAD"):
        os.environ.pop(key, None)
    os.environ.update(values)


explain = layerdecay.explain
step = sys.argv[1]

if step == "installed":
    setenv(LAYERDECAY_DISABLE_PLUGINS=REAL)
    out["explain"] = attempt(explain)
    out["param_groups"] = attempt(lambda m: layerdecay.param_groups(m, lr=1.0))
    out["infos"] = infos(layerdecay.create_plugin_host())

elif step == "control":
    setenv(LAYERDECAY_DISABLE_PLUGINS=REAL + ",brokenfam,typofam")
    out["disabled"] = attempt(explain)
    out["disabled_infos"] = infos(layerdecay.create_plugin_host())
    out["disabled_imports"] = imports()

    setenv(LAYERDECAY_PLUGINS="fakefam")
    out["allowed"] = attempt(explain)
    out["allowed_infos"] = infos(layerdecay.create_plugin_host())

    setenv(LAYERDECAY_DISABLE_PLUGIN_AUTOLOAD="1")
    out["no_autoload"] = attempt(explain)
    out["no_autoload_infos"] = infos(layerdecay.create_plugin_host())
    out["control_imports"] = imports()

    setenv()  # the arguments alone, environment clean (everything installed would load)
    host = layerdecay.create_plugin_host(autoload=False)
    out["arg_autoload"] = attempt(explain, host=host)
    out["arg_autoload_infos"] = infos(host)
    host = layerdecay.create_plugin_host(enable=["fakefam"])
    out["arg_enable"] = attempt(explain, host=host)
    out["arg_enable_infos"] = infos(host)
    host = layerdecay.create_plugin_host(disable=REAL.split(",") + ["brokenfam", "typofam"])
    out["arg_disable"] = attempt(explain, host=host)
    out["arg_imports"] = imports()

elif step == "runtime":
    setenv(LAYERDECAY_PLUGINS="fakefam")

    class EveryBlock:
        """A runtime rule for FakeNet: one layer id per block."""
        __name__ = "every-block"

        @layerdecay.hookimpl
        def layerdecay_num_layers(self, model):
            return len(model.model.blocks) + 2 if type(model.model).__name__ == "FakeNet" else None

        @layerdecay.hookimpl
        def layerdecay_layer_id(self, model, num_layers):
            def layer_id(name):
                if name.startswith("blocks."):
                    return int(name.split(".")[1]) + 1
                return 0 if name.startswith("stem.") else num_layers - 1
            return layer_id

    class Linear:
        """Overrides the core's exponential scale."""
        __name__ = "linear-scale"

        @layerdecay.hookimpl
        def layerdecay_lr_scale(self, num_layers):
            return [(i + 1) / num_layers for i in range(num_layers)]

    class DecayEverything:
        """Overrides the core's weight-decay policy."""
        __name__ = "decay-everything"

        @layerdecay.hookimpl
        def layerdecay_param_policy(self):
            return lambda name, param, module: layerdecay.Decision(weight_decay=True, reason="all")

    out["before"] = attempt(explain)
    rule = EveryBlock()
    layerdecay.register(rule)
    out["registered"] = attempt(explain)
    layerdecay.unregister(rule)
    out["unregistered"] = attempt(explain)
    out["per_call"] = attempt(explain, plugins=[EveryBlock(), Linear(), DecayEverything()])
    out["after_per_call"] = attempt(explain)
    layerdecay.register(rule)
    out["per_call_over_runtime"] = attempt(explain, plugins=[Linear()])
    layerdecay.unregister(rule)
    out["end"] = attempt(explain)

print(json.dumps(out))
'''


def _write_distribution(root: Path, entry_point: str, distribution: str, version: str, source: str) -> None:
    module = f"ld_test_{entry_point}"
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[layerdecay]\n{entry_point} = {module}\n")
    (info / "RECORD").write_text("")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    for entry_point, (distribution, version, source) in FAKES.items():
        _write_distribution(root, entry_point, distribution, version, source)
    (root / "driver.py").write_text(DRIVER)
    return root


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERDECAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["TEST_REAL_PLUGINS"] = REAL_PLUGINS
    env.update(extra)
    return env


# The plugins actually installed in this environment (the family plugins): blocked in the subprocess.
REAL_PLUGINS = ",".join(sorted(ep.name for ep in metadata.entry_points(group="layerdecay"))) or "none"


def run_driver(site: Path, step: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(site / "driver.py"), step], capture_output=True, text=True,
                          env=_env(site), timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def installed(site: Path) -> dict[str, Any]:
    return run_driver(site, "installed")


@pytest.fixture(scope="module")
def control(site: Path) -> dict[str, Any]:
    return run_driver(site, "control")


@pytest.fixture(scope="module")
def runtime(site: Path) -> dict[str, Any]:
    return run_driver(site, "runtime")


# What fakefam's rule gives FakeNet (stem, 4 blocks, head): two blocks per layer id, 4 layer ids.
FAKEFAM_IDS = {"stem.weight": 0, "stem.bias": 0, "blocks.0.weight": 1, "blocks.0.bias": 1, "blocks.1.weight": 1,
               "blocks.1.bias": 1, "blocks.2.weight": 2, "blocks.2.bias": 2, "blocks.3.weight": 2,
               "blocks.3.bias": 2, "head.weight": 3, "head.bias": 3}
# The generic fallback: one layer id per block, 6 layer ids.
GENERIC_IDS = {"stem.weight": 0, "stem.bias": 0, "blocks.0.weight": 1, "blocks.0.bias": 1, "blocks.1.weight": 2,
               "blocks.1.bias": 2, "blocks.2.weight": 3, "blocks.2.bias": 3, "blocks.3.weight": 4,
               "blocks.3.bias": 4, "head.weight": 5, "head.bias": 5}


# -- a plugin failing at import, or declaring an unknown hook ------------------------------------------------


@pytest.mark.parametrize("api", ["explain", "param_groups"])
def test_failed_plugins_make_api_calls_raise_naming_them(installed, api):
    result = installed[api]
    assert result["error"] == "PluginError"
    message = result["message"]
    assert "2 layerdecay plugin(s) failed to load" in message
    # the failing import: entry point, distribution, version, cause and how to disable it
    assert "'brokenfam'" in message and "layerdecay-brokenfam 0.0.1" in message
    assert "RuntimeError: libfakefam.so: cannot open shared object file" in message
    assert "LAYERDECAY_DISABLE_PLUGINS=brokenfam" in message and "uninstall layerdecay-brokenfam" in message
    # the unknown hook
    assert "'typofam'" in message and "layerdecay-typofam 2.0" in message
    assert "layerdecay_num_layer is not a layerdecay hook" in message
    assert "LAYERDECAY_DISABLE_PLUGINS=typofam" in message
    assert result["plugin"] == "brokenfam"


def test_plugin_infos_record_the_failures(installed):
    infos = installed["infos"]
    source, dist, version, status, error, hooks = infos["brokenfam"]
    assert (source, dist, version, status, hooks) == ("entry point", "layerdecay-brokenfam", "0.0.1", "failed", [])
    assert "libfakefam.so" in error
    assert infos["typofam"][3] == "failed" and "layerdecay_num_layer" in infos["typofam"][4]
    assert infos["fakefam"] == ["entry point", "layerdecay-fakefam", "1.2.3", "loaded", None,
                                ["layerdecay_layer_id", "layerdecay_num_layers"]]
    for real in filter(None, REAL_PLUGINS.split(",")):
        if real in infos:
            assert infos[real][3] == "disabled"


def test_failed_plugin_can_be_disabled_by_name_without_uninstalling(control):
    result = control["disabled"]
    assert result["owner"] == "fakefam"
    assert result["ids"] == FAKEFAM_IDS
    assert result["num_layers"] == 4
    assert result["warnings"] == []
    assert control["disabled_infos"]["brokenfam"][3] == "disabled"
    assert control["disabled_infos"]["typofam"][3] == "disabled"
    assert control["disabled_imports"] == []  # a disabled plugin is never imported


def test_allow_list_loads_only_the_named_plugins(control):
    assert control["allowed"]["owner"] == "fakefam"
    statuses = {name: info[3] for name, info in control["allowed_infos"].items()}
    assert statuses["fakefam"] == "loaded"
    assert statuses["brokenfam"] == statuses["typofam"] == "not allowed"
    assert {s for n, s in statuses.items() if n not in ("core", "generic", "fakefam")} == {"not allowed"}
    assert statuses["core"] == statuses["generic"] == "loaded"  # built-ins are not entry points


def test_no_autoload_loads_no_plugin(control):
    result = control["no_autoload"]
    assert result["owner"] == "generic"
    assert result["ids"] == GENERIC_IDS
    statuses = {name: info[3] for name, info in control["no_autoload_infos"].items()}
    assert {s for n, s in statuses.items() if n not in ("core", "generic")} == {"not autoloaded"}
    assert control["control_imports"] == []


def test_the_same_controls_as_arguments(control):
    assert control["arg_autoload"]["owner"] == "generic"
    assert control["arg_autoload"]["ids"] == GENERIC_IDS
    assert {i[3] for n, i in control["arg_autoload_infos"].items() if n not in ("core", "generic")} == {
        "not autoloaded"}
    assert control["arg_enable"]["owner"] == "fakefam"
    assert control["arg_enable_infos"]["brokenfam"][3] == "not allowed"
    assert control["arg_disable"]["owner"] == "fakefam"
    assert control["arg_disable"]["ids"] == FAKEFAM_IDS
    assert control["arg_imports"] == []


# -- runtime registration and per-call plugins -----------------------------------------------------------------


def test_installed_plugin_changes_the_plan(runtime):
    assert runtime["before"]["owner"] == "fakefam"
    assert runtime["before"]["ids"] == FAKEFAM_IDS
    assert runtime["before"]["scales"] == pytest.approx([0.75**3, 0.75**2, 0.75, 1.0])


def test_registered_rule_overrides_the_installed_plugin_until_unregistered(runtime):
    registered = runtime["registered"]
    assert registered["owner"] == "every-block"
    assert registered["ids"] == GENERIC_IDS  # one layer id per block, like the rule says
    # A registered rule overriding an installed plugin is the documented precedence, not a rivalry.
    assert [w for w in registered["warnings"] if "claim" in w] == []
    assert runtime["unregistered"]["owner"] == "fakefam"
    assert runtime["unregistered"]["ids"] == FAKEFAM_IDS


def test_per_call_plugins_override_installed_and_builtin_rules_and_do_not_leak(runtime):
    per_call = runtime["per_call"]
    assert per_call["owner"] == "every-block"
    assert per_call["scales"] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])  # not exponential
    assert set(per_call["decay"].values()) == {0.05}  # biases decay too: the core's policy is overridden
    after = runtime["after_per_call"]
    assert after["owner"] == "fakefam" and after["ids"] == FAKEFAM_IDS
    assert after["scales"] == pytest.approx([0.75**3, 0.75**2, 0.75, 1.0])
    assert after["decay"]["blocks.0.bias"] == 0.0


def test_per_call_plugins_stack_on_runtime_rules(runtime):
    result = runtime["per_call_over_runtime"]
    assert result["owner"] == "every-block"
    assert result["scales"] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    assert runtime["end"]["owner"] == "fakefam"


# -- the CLI ---------------------------------------------------------------------------------------------------------


def test_cli_plugins_shows_failures_and_why(site):
    done = subprocess.run([sys.executable, "-m", "layerdecay", "plugins"], capture_output=True, text=True,
                          env=_env(site, LAYERDECAY_DISABLE_PLUGINS=REAL_PLUGINS), timeout=120)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "failed" in lines["brokenfam"] and "layerdecay-brokenfam 0.0.1" in lines["brokenfam"]
    assert "failed" in lines["typofam"]
    assert "loaded" in lines["fakefam"] and "layer_id" in lines["fakefam"]
    assert "libfakefam.so: cannot open shared object file" in done.stdout
    assert "layerdecay_num_layer is not a layerdecay hook" in done.stdout
    assert "LAYERDECAY_DISABLE_PLUGINS=brokenfam" in done.stdout


def test_cli_plugins_shows_disabled_plugins(site):
    env = _env(site, LAYERDECAY_DISABLE_PLUGINS=REAL_PLUGINS + ",brokenfam")
    done = subprocess.run([sys.executable, "-m", "layerdecay", "plugins"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("brokenfam"))
    assert "disabled" in line
    assert "libfakefam.so" not in done.stdout
