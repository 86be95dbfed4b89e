"""The runnable examples in examples/, each run for a few steps; the lrs they end with are checked by formula."""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.filterwarnings("ignore::layerdecay.LayerDecayWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning", "ignore::UserWarning")


def example(name: str):
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")


def _assert_powers(mults, decay):
    """Multipliers are decay ** k, the top one 1.0, each layer present."""
    ks = sorted({round(math.log(m, decay), 9) for m in mults})
    assert ks == list(range(len(ks))), mults


def test_own_loop_convnext_style():
    pytest.importorskip("timm")
    result = example("own_loop_convnext_style")["main"](steps=4)
    assert len(result["history"]) == 4
    for h in result["history"]:
        top = max(g[4] for g in h["groups"])
        for lr, lr_scale, wd, wd_mult, layer_id in h["groups"]:
            assert lr_scale == pytest.approx(0.8 ** (top - layer_id), rel=1e-12)
            assert lr == pytest.approx(h["lr"] * lr_scale, rel=1e-12)
            assert wd_mult in (0.0, 1.0)
            assert wd == pytest.approx(h["wd"] * wd_mult, rel=1e-12)
    decays = {g[3] for g in result["history"][0]["groups"]}
    assert decays == {0.0, 1.0}  # the schedule skipped the no-decay groups


def test_own_loop_runs_as_a_script():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "own_loop_convnext_style.py"), "--steps", "2"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("loss") == 2


@pytest.mark.parametrize("mode", ["optimizers", "optimizer_cls_and_kwargs"])
def test_hf_trainer(mode):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    result = example("hf_trainer")["main"](steps=3, mode=mode, warmup=10, lr=1e-3)
    assert result["steps"] == 3
    _assert_powers(result["lr_mults"], 0.7)
    for lr, mult in zip(result["lrs"], result["lr_mults"], strict=True):
        assert lr == pytest.approx(1e-3 * 3 / 10 * mult, rel=1e-12)  # constant_with_warmup after 3 of 10 steps
    for names, wd in zip(result["names"], result["weight_decays"], strict=True):
        no_decay = [n.endswith("bias") or "LayerNorm" in n for n in names]
        assert all(no_decay) if wd == 0.0 else (not any(no_decay) and wd == 0.01), names


@pytest.mark.parametrize(("script", "package"), [("lightning_module", "lightning"), ("accelerate_loop", "accelerate")])
def test_lightning_and_accelerate(script, package):
    pytest.importorskip(package)
    result = example(script)["main"](steps=3)
    assert result["steps"] == 3
    _assert_powers(result["lr_mults"], 0.75)
    for lr, mult in zip(result["lrs"], result["lr_mults"], strict=True):
        assert lr == pytest.approx(result["base_lr"] * 0.9 ** 3 * mult, rel=1e-12)


def test_deepspeed_zero_1_and_2_match_pytorch(tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "ds.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(EXAMPLES / "deepspeed_zero.py"), "--stage", "1", "--stage", "2", "--steps", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    if proc.returncode != 0 and "shm_comm" in proc.stdout + proc.stderr and "error" in proc.stderr.lower():
        pytest.skip("DeepSpeed could not build its CPU communication op here: " + proc.stderr[-500:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for stage in ("zero1", "zero2"):
        r = result[stage]
        assert r["groups"] == r["planned_groups"]  # nothing dropped: the core never emits empty groups
        assert r["max_diff"] < 1e-6  # same update as torch AdamW on the same global batch
        _assert_powers(r["lr_mults"], 0.6)
        for lr, mult in zip(r["lrs"], r["lr_mults"], strict=True):
            assert lr == pytest.approx(1e-2 * 0.8 ** 3 * mult, rel=1e-12)
