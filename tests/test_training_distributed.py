"""Distributed training with layerdecay's groups: 2 gloo processes on CPU, one launch, checks per rank.

See tests/dist/dist_checks.py for what each rank does; here the numbers are asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed.fsdp")
DIST = Path(__file__).parent / "dist"
sys.path.insert(0, str(DIST))
from ldtrain_common import make_model  # noqa: E402


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(DIST / "dist_checks.py"), str(out)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_ddp_gets_the_bare_plan_and_trains_identically(ranks):
    names = [n for n, _ in make_model().named_parameters()]
    for r in ranks:
        assert r["ddp_plan_equal"]
        assert sorted(r["ddp_names"]) == sorted(names)  # no "module." prefix reaches the state dict
        assert r["ddp_ranks_bitwise_equal"]
        assert r["ddp_vs_single_max_diff"] < 1e-6


def test_fsdp2_built_after_sharding_trains_like_one_process(ranks):
    for r in ranks:
        assert r["fsdp2_plan_equal"]  # DTensor shapes are the global ones
        assert r["fsdp2_vs_single_max_diff"] < 1e-6


def test_fsdp2_built_before_sharding_is_stale_and_verify_names_it(ranks):
    for r in ranks:
        assert r["fsdp2_stale_max_change"] == 0.0  # step() silently updated nothing
        message = r["fsdp2_stale_error"]
        assert message is not None and "stale" in message and "stem.weight" in message
        assert "24 optimizer parameter(s)" in message


def test_dcp_optimizer_state_keeps_group_keys_and_resumes_bitwise(ranks):
    for r in ranks:
        for key in ("group_name", "layer_id", "lr_mult", "wd_mult", "param_names"):
            assert key in r["dcp_group_keys"]
            assert key in r["dcp_group_keys_after_load"]
        assert r["dcp_group_names"][0] == "layer_0_decay"
        assert r["dcp_lrs_restored"]
        assert r["dcp_resume_bitwise"]


def test_fsdp1_views_keep_names_and_layers(ranks):
    for r in ranks:
        assert r["fsdp1_names_equal"]
        assert r["fsdp1_layers_equal"]
        assert r["fsdp1_trains"]
    # each rank sees flat 1-D shards, some empty; the plan shows the real shapes behind them
    for r in ranks:
        assert r["fsdp1_shapes"]["stem.weight"] == [8, 6]


def test_fsdp1_views_keep_each_family_plugin_and_its_recipe(ranks):
    # The plugins recognize a family by its shapes; under FSDP1 they read the real ones, not the flat shards.
    for r in ranks:
        families = r["fsdp1_families"]
        assert {arch: f["owner"] for arch, f in families.items()} == {
            "vit_tiny_patch16_224": "vit", "convnext_atto": "convnext", "swin_tiny_patch4_window7_224": "swin"}
        for arch, found in families.items():
            assert found["bare_owner"] == found["owner"], arch
            assert found["same_plan"], arch
            assert not found["warnings"], arch


def test_fsdp1_groups_built_before_wrapping_stay_valid(ranks):
    # use_orig_params=True keeps the Parameter objects: a plan of the bare model keeps its decisions and trains.
    for r in ranks:
        assert r["fsdp1_prewrap_verify"] == "ok"
        assert r["fsdp1_prewrap_decay_ok"]
        assert r["fsdp1_prewrap_trains"]


def test_fsdp1_views_keep_weight_decay_decisions(ranks):
    # Each rank sees flat 1-D shard views; the plan reads the real shapes, so no decision changes.
    for r in ranks:
        assert r["fsdp1_decay_changed"] == []


def test_fsdp2_example_runs_on_both_ranks(ranks):
    for r in ranks:
        ex = r["example"]
        assert len(ex["losses"]) == 2 and all(loss > 0 for loss in ex["losses"])
        assert ex["lr_mults"] == sorted(ex["lr_mults"])
        top = max(ex["lr_mults"])
        assert top == 1.0 and min(ex["lr_mults"]) < 1.0
    assert ranks[0]["example"]["lr_mults"] == ranks[1]["example"]["lr_mults"]


