"""Property-based tests: random module trees, and the invariants every plan keeps.

Trees mix ModuleList/Sequential/ModuleDict/custom containers, repeated blocks, shared (tied) modules and
parameters, frozen subsets, several dtypes and the meta device; wrappers (DDP-like ``module``, compile's
``_orig_mod``, FSDP1's ``_fsdp_wrapped_module``, checkpointing's ``_checkpoint_wrapped_module``) are nested
in any order at the root and mid-path. A tree is built from an integer seed, so the same builder runs in a
subprocess (``python tests/test_properties.py SEED...``) to check determinism across hash seeds.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

try:  # the subprocess entry point below needs only torch and layerdecay
    import pytest
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

import layerdecay
from layerdecay import LayerDecayWarning

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
CHILD_NAMES = ("a", "b", "fc", "proj", "attn", "mlp", "norm", "blocks", "layers", "head", "stem", "x1", "down")
RAW_NAMES = ("weight", "scale", "gamma", "cls_token", "pos_embed", "alpha", "bias", "w", "table")


# -- the tree builder ---------------------------------------------------------------------------------


class Custom(nn.Module):
    """A user-defined container: named children and maybe parameters of its own."""


class DDPLike(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner


class CompiledLike(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner


class FSDPLike(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._fsdp_wrapped_module = inner


class CheckpointLike(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._checkpoint_wrapped_module = inner


WRAPPERS = (DDPLike, CompiledLike, FSDPLike, CheckpointLike)
LISTED_NAMES = ("weight", "w")  # what a module's own no_weight_decay() lists, as timm's Swin lists its tables


def own_weights(module: nn.Module) -> set[str]:
    """A ``no_weight_decay()`` built the way many timm models build theirs: from the module's own listing."""
    return {n for n, _ in module.named_parameters() if n.rpartition(".")[2] in LISTED_NAMES}


_LISTING_CLASSES: dict[type, type] = {}


def listing_class(cls: type) -> type:
    """``cls`` with :func:`own_weights` as its ``no_weight_decay()`` (one subclass per class)."""
    if cls not in _LISTING_CLASSES:
        _LISTING_CLASSES[cls] = type(f"Listing{cls.__name__}", (cls,), {"no_weight_decay": own_weights})
    return _LISTING_CLASSES[cls]


def _raw(rng: random.Random) -> nn.Module:
    module = Custom()
    for name in rng.sample(RAW_NAMES, rng.randint(1, 3)):
        shape = tuple(rng.randint(1, 3) for _ in range(rng.randint(0, 3)))
        module.register_parameter(name, nn.Parameter(torch.empty(shape)))
    return module


def _leaf(rng: random.Random) -> nn.Module:
    kind = rng.choice(("linear", "norm", "conv", "embedding", "raw"))
    if kind == "linear":
        module: nn.Module = nn.Linear(rng.randint(1, 4), rng.randint(1, 4), bias=rng.random() < 0.7)
    elif kind == "norm":
        module = nn.LayerNorm(rng.randint(1, 4))
    elif kind == "conv":
        module = nn.Conv2d(rng.randint(1, 3), rng.randint(1, 3), 1)
    elif kind == "embedding":
        module = nn.Embedding(rng.randint(2, 5), rng.randint(1, 3))
    else:
        module = _raw(rng)
    return module.to(rng.choice(DTYPES))


def _tree(rng: random.Random, depth: int) -> nn.Module:
    if depth == 0 or rng.random() < 0.3:
        return _leaf(rng)
    kind = rng.choice(("list", "seq", "dict", "custom"))
    n = rng.randint(1, 4)
    if rng.random() < 0.5:  # repeated blocks: the same sub-tree n times
        sub_seed = rng.getrandbits(32)
        children = [_tree(random.Random(sub_seed), depth - 1) for _ in range(n)]
    else:
        children = [_tree(rng, depth - 1) for _ in range(n)]
    if kind == "list":
        return nn.ModuleList(children)
    if kind == "seq":
        return nn.Sequential(*children)
    names = rng.sample(CHILD_NAMES, n)
    if kind == "dict":
        return nn.ModuleDict(dict(zip(names, children, strict=True)))
    module = _raw(rng) if rng.random() < 0.3 else Custom()
    for name, child in zip(names, children, strict=True):
        module.add_module(name, child)
    return module


def build_model(seed: int) -> nn.Module:
    """A random tree (shared modules and parameters, frozen subsets, a module's own ``no_weight_decay()``) on
    meta or CPU, from ``seed``."""
    rng = random.Random(seed)
    device = rng.choice(("meta", "cpu"))
    with torch.device(device):
        root = Custom()
        for name in rng.sample(CHILD_NAMES, rng.randint(1, 4)):
            root.add_module(name, _tree(rng, 3))
    modules = [m for _, m in root.named_modules()]
    if rng.random() < 0.4:  # a module shared at a second place
        shared = rng.choice(modules[1:])
        inside = {id(m) for m in shared.modules()}
        holders = [m for m in modules if type(m) is Custom and id(m) not in inside]  # no cycles
        rng.choice(holders).add_module("shared", shared)
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    if len(linears) >= 2 and rng.random() < 0.5:  # a tied parameter
        a, b = rng.sample(linears, 2)
        b.weight = a.weight
    if rng.random() < 0.5:  # a module that lists some of its own parameters in no_weight_decay()
        holder = rng.choice(modules)
        holder.__class__ = listing_class(type(holder))
    params = list(root.parameters())
    frozen_share = rng.choice((0.0, 0.3, 0.7))
    for p in params:
        p.requires_grad_(rng.random() >= frozen_share)
    params[rng.randrange(len(params))].requires_grad_(True)
    return root


def wrap_model(model: nn.Module, seed: int) -> nn.Module:
    """Put random wrapper chains around random sub-modules (mid-path) and around the root."""
    rng = random.Random(seed)

    def chain(module: nn.Module) -> nn.Module:
        for _ in range(rng.randint(1, 3)):
            module = rng.choice(WRAPPERS)(module)
        return module

    slots = [(parent, name) for _, parent in model.named_modules() for name in list(parent._modules)]
    for parent, name in rng.sample(slots, min(len(slots), rng.randint(0, 4))):
        parent._modules[name] = chain(parent._modules[name])
    return chain(model) if rng.random() < 0.8 else model


def plan_json(model: nn.Module, layer_decay: float = 0.7, weight_decay: float = 0.05) -> str:
    host = layerdecay.create_plugin_host(autoload=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerDecayWarning)
        return layerdecay.explain(model, layer_decay=layer_decay, weight_decay=weight_decay, host=host).to_json()


# -- the properties --------------------------------------------------------------------------------------

if pytest is not None:
    SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    seeds = st.integers(min_value=0, max_value=2**32 - 1)
    decays = st.floats(min_value=0.05, max_value=1.0, allow_nan=False)
    weight_decays = st.sampled_from([0.0, 0.01, 0.05, 0.3])

    @pytest.fixture(scope="module")
    def host() -> layerdecay.PluginHost:
        return layerdecay.create_plugin_host(autoload=False)

    def _explain(model, host, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LayerDecayWarning)
            return layerdecay.explain(model, host=host, **kwargs)

    @SETTINGS
    @given(seed=seeds, layer_decay=decays, weight_decay=weight_decays)
    def test_groups_partition_the_trainable_parameters(host, seed, layer_decay, weight_decay):
        model = build_model(seed)
        plan = _explain(model, host, layer_decay=layer_decay, weight_decay=weight_decay)
        groups = plan.param_groups(1.0, named=False)

        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        frozen = {id(p) for p in model.parameters() if not p.requires_grad}
        placed = [id(p) for g in groups for p in g["params"]]
        assert len(placed) == len(set(placed)), "a parameter is in two groups"
        assert set(placed) == trainable
        assert not set(placed) & frozen
        assert all(g["params"] for g in groups), "an empty group"
        # rows are the trainable parameters in model order, under their normalized names
        named = {id(p): n for n, p in model.named_parameters()}
        assert [r.name for r in plan.rows] == [named[id(p)] for p in plan.parameters]
        assert [id(p) for p in plan.parameters] == [id(p) for p in model.parameters() if p.requires_grad]

    @SETTINGS
    @given(seed=seeds)
    def test_the_view_lists_what_torch_lists(seed):
        """Both walks (the fast one for unshared trees, the careful one for shared modules and parameters)
        list the parameters and modules that torch's own listings give, with their types and spans."""
        model = build_model(seed)
        # One module at a time, asked before anything builds the dict of them: what named_modules() says.
        fresh = layerdecay.ModelView(model)
        assert [id(fresh.module(path)) for path, _ in model.named_modules()] == [
            id(m) for _, m in model.named_modules()]
        assert fresh.module("no.such.path") is None
        view = layerdecay.ModelView(model)
        assert list(view.names) == [n for n, _ in model.named_parameters()]
        assert view.local_names == tuple(n.rpartition(".")[2] for n in view.names)
        assert [id(p) for p in view.params] == [id(p) for p in model.parameters()]
        assert list(view.modules) == [n for n, _ in model.named_modules()]
        assert view.module_types == tuple(type(m) for _, m in model.named_modules())
        listed = list(model.named_modules())
        picked = random.Random(seed).sample(range(len(listed)), k=min(3, len(listed)))
        expected = [(listed[k][0], id(listed[k][1])) for k in sorted(picked)]
        assert [(path, id(m)) for path, m in view.modules_at(picked)] == expected
        assert view.modules_at([]) == []
        # By type (subclasses included), by a tuple of types and by a test of the class: what isinstance finds.
        for kind in (nn.Linear, (nn.ModuleList, nn.Sequential), Custom, nn.Module):
            found = [(path, id(m)) for path, m in view.modules_of_type(kind)]
            assert found == [(path, id(m)) for path, m in model.named_modules() if isinstance(m, kind)]
        by_test = [(path, id(m)) for path, m in view.modules_of_type(lambda cls: cls.__name__.startswith("Layer"))]
        assert by_test == [(p, id(m)) for p, m in model.named_modules() if type(m).__name__.startswith("Layer")]
        owners: dict[int, nn.Module] = {}  # a tied parameter's owner is where it is first seen
        for _, module in model.named_modules():
            for p in module._parameters.values():
                if p is not None:
                    owners.setdefault(id(p), module)
        assert all(owner is owners[id(p)] for p, owner in zip(view.params, view.owners, strict=True))
        for path, module in model.named_modules():
            below = {id(p) for p in module.parameters()}
            assert {id(view.params[i]) for i in view.span(path)} <= below  # a tied one counts where first seen
            assert view.shapes == tuple(p.shape for p in view.params)
        # Each module's own listing as the walk answers it: torch's, wherever the walk can tell.
        shared = len(list(model.named_modules(remove_duplicate=False))) != len(view.modules) or len(
            list(model.named_parameters(remove_duplicate=False))) != len(view.names)
        for path, module in model.named_modules():
            listed = view.named_parameters_of(path)
            assert (listed is None) == shared
            if listed is not None:
                assert [(n, id(p)) for n, p in listed] == [(n, id(p)) for n, p in module.named_parameters()]
        wrapped_model = wrap_model(model, seed)
        wrapped = layerdecay.ModelView(wrapped_model)  # wrappers inside spell out their components
        expected = [(path, id(module)) for path, module in layerdecay.ModelView(wrapped_model).modules.items()]
        assert [(path, id(wrapped.module(path))) for path, _ in expected] == expected
        for path, module in wrapped.modules.items():
            listed = wrapped.named_parameters_of(path)
            if listed is not None:
                assert [(n, id(p)) for n, p in listed] == [(n, id(p)) for n, p in module.named_parameters()]

    @SETTINGS
    @given(seed=seeds, wrap_seed=seeds)
    def test_a_modules_own_list_is_honoured_under_wrappers(host, seed, wrap_seed):
        """Whatever a module's ``no_weight_decay()`` lists (read off its own parameters, asked here directly)
        gets no weight decay, bare or with wrappers around and inside the model."""
        model = build_model(seed)
        listed = {f"{path}.{n}" if path else n for path, m in model.named_modules()
                  if hasattr(m, "no_weight_decay") for n in m.no_weight_decay()}
        modules = list(model.modules())
        attributes = [set(vars(m)) for m in modules]
        for plan in (_explain(model, host), _explain(wrap_model(model, wrap_seed), host)):
            for row in plan.rows:
                if row.name in listed:
                    assert row.weight_decay == 0.0, row.name
        assert [set(vars(m)) for m in modules] == attributes  # nothing was set on any module

    @SETTINGS
    @given(seed=seeds, layer_decay=decays, weight_decay=weight_decays)
    def test_multipliers_follow_the_exponential_rule(host, seed, layer_decay, weight_decay):
        plan = _explain(build_model(seed), host, layer_decay=layer_decay, weight_decay=weight_decay)
        top = plan.num_layers - 1
        for row in plan.rows:
            assert 0 <= row.layer_id <= top
            assert 0.0 < row.lr_mult <= 1.0
            assert row.lr_mult == pytest.approx(layer_decay ** (top - row.layer_id), rel=1e-12)
            assert row.weight_decay in (0.0, weight_decay)
        for group in plan.param_groups(2.0):
            assert group["lr"] == pytest.approx(2.0 * group["lr_mult"])
            assert 0.0 < group["lr"] <= 2.0

    @SETTINGS
    @given(seed=seeds, layer_decay=decays, weight_decay=weight_decays)
    def test_number_of_groups_is_minimal(host, seed, layer_decay, weight_decay):
        plan = _explain(build_model(seed), host, layer_decay=layer_decay, weight_decay=weight_decay)
        pairs = {(r.lr_mult, r.weight_decay) for r in plan.rows if not r.excluded}
        assert len(plan.groups) == len(pairs)
        for group in plan.groups:
            assert {(plan.rows[i].lr_mult, plan.rows[i].weight_decay) for i in group.rows} == {
                (group.lr_mult, group.weight_decay)
            }

    @SETTINGS
    @given(seed=seeds, wrap_seed=seeds)
    def test_wrappers_do_not_change_the_plan(host, seed, wrap_seed):
        model = build_model(seed)
        bare = _explain(model, host)
        bare_names = [n for n, p in model.named_parameters() if p.requires_grad]
        wrapped_model = wrap_model(model, wrap_seed)
        wrapped = _explain(wrapped_model, host)
        assert wrapped.to_json() == bare.to_json()
        assert [r.name for r in wrapped.rows] == bare_names
        assert [id(p) for p in wrapped.parameters] == [id(p) for p in bare.parameters]

    @SETTINGS
    @given(seed=seeds)
    def test_deterministic_within_a_process(host, seed):
        first = _explain(build_model(seed), host).to_json()
        assert _explain(build_model(seed), host).to_json() == first
        groups = [g["group_name"] for g in _explain(build_model(seed), host).param_groups(1.0)]
        assert groups == [g["name"] for g in json.loads(first)["groups"]]

    @SETTINGS
    @given(seed=seeds)
    def test_frozen_parameters_do_not_shift_layer_ids(host, seed):
        """Freezing more parameters never changes the layer id or scale of the others."""
        model = build_model(seed)
        full = _explain(model, host)
        rows = {r.name: r for r in full.rows}
        trainable = [p for p in model.parameters() if p.requires_grad]
        if len(trainable) < 2:
            return
        trainable[0].requires_grad_(False)
        fewer = _explain(model, host)
        assert fewer.num_layers == full.num_layers
        for row in fewer.rows:
            assert (row.layer_id, row.lr_mult, row.weight_decay) == (
                rows[row.name].layer_id, rows[row.name].lr_mult, rows[row.name].weight_decay)

    def test_deterministic_across_processes_and_hash_seeds():
        seeds_ = [str(s) for s in range(0, 400, 17)]
        expected = [plan_json(wrap_model(build_model(int(s)), int(s))) for s in seeds_]
        root = Path(__file__).resolve().parents[1]
        runs = {
            hash_seed: subprocess.Popen([sys.executable, __file__, *seeds_], stdout=subprocess.PIPE, text=True,
                                        env=dict(os.environ, PYTHONHASHSEED=hash_seed), cwd=root)
            for hash_seed in ("0", "4242")
        }
        for hash_seed, run in runs.items():
            out, _ = run.communicate(timeout=120)
            assert run.returncode == 0
            assert json.loads(out) == expected, f"PYTHONHASHSEED={hash_seed} gives another plan"

    def test_builder_covers_the_cases_it_claims():
        """The generator really produces wrappers, ties, frozen parameters, several dtypes and meta tensors."""
        ties = frozen = meta = shared = 0
        dtypes = set()
        for s in range(60):
            model = build_model(s)
            params = list(model.parameters())
            frozen += any(not p.requires_grad for p in params)
            meta += params[0].is_meta
            dtypes |= {p.dtype for p in params}
            names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
            ties += len(names) > len(params)
            mods = [m for _, m in model.named_modules(remove_duplicate=False)]
            shared += len(mods) > len({id(m) for m in mods})
        assert ties and frozen and meta and shared and len(dtypes) == len(DTYPES)
        assert math.isclose(meta / 60, 0.5, abs_tol=0.3)


if __name__ == "__main__":
    print(json.dumps([plan_json(wrap_model(build_model(int(s)), int(s))) for s in sys.argv[1:]]))
