"""Distributed checks in one 2-process gloo launch: ``torchrun --standalone --nproc_per_node=2 dist_checks.py OUT``.

Each rank writes ``OUT/rank<r>.json``; the test asserts on them. Checks: DDP plan and identical training,
FSDP2 built after sharding == single-process reference, FSDP2 built before sharding is stale (verify names
it), DCP optimizer save/load resumes bit-for-bit, FSDP1 use_orig_params decisions, and the FSDP2 example.
"""

from __future__ import annotations

import json
import runpy
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).parent))
from ldtrain_common import PLUGIN, Block, batch, make_model

import layerdecay
from layerdecay import PlanMismatchError
from layerdecay.training import verify

OPTIONS = {"layer_decay": 0.6, "weight_decay": 0.05, "plugins": [PLUGIN]}
LR = 1e-2
LINEAR_WEIGHTS = {"stem.weight", "head.weight"} | {f"blocks.{i}.{fc}.weight" for i in range(3) for fc in ("fc1", "fc2")}
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fsdp2_train.py"


# Small members of each family, as timm builds them, and the class of their blocks (FSDP1's wrapping unit).
FAMILY_ARGS = {
    "vit_tiny_patch16_224": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32, "patch_size": 8},
    "convnext_atto": {"depths": (1, 1, 2, 1), "dims": (8, 16, 32, 64)},
    "swin_tiny_patch4_window7_224": {"img_size": 32, "window_size": 2, "embed_dim": 8, "depths": (1, 1, 2, 1),
                                     "num_heads": (1, 1, 2, 2)},
}
FAMILY_MODELS = {
    "vit_tiny_patch16_224": lambda arch: type(family_model(arch).blocks[0]),
    "convnext_atto": lambda arch: type(family_model(arch).stages[0].blocks[0]),
    "swin_tiny_patch4_window7_224": lambda arch: type(family_model(arch).layers[0].blocks[0]),
}


def family_model(arch):
    import timm

    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, num_classes=3, **FAMILY_ARGS[arch])


def plan_key(model):
    return [(r.name, list(r.shape), r.layer_id, r.lr_mult, r.weight_decay) for r in layerdecay.explain(model,
                                                                                                      **OPTIONS).rows]


def step(model, opt, s, rank=0, n=4):
    x, y = batch(s, n=n, rank=rank)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def full(model):
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}


def reference(steps, seed=0):
    model = make_model(seed)
    opt = layerdecay.build_optimizer(model, "adamw", lr=LR, **OPTIONS)
    for s in range(steps):
        step(model, opt, s)
    return full(model)


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def sharded(seed=0):
    model = make_model(seed)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    res: dict = {"rank": rank, "world": world}
    bare_key = plan_key(make_model())

    # DDP: the bare plan, names without "module.", identical parameters on every rank.
    ddp = DDP(make_model())
    res["ddp_plan_equal"] = plan_key(ddp) == bare_key
    opt = layerdecay.build_optimizer(ddp, "adamw", lr=LR, **OPTIONS)
    res["ddp_names"] = [n for g in opt.param_groups for n in g["param_names"]]
    for s in range(3):
        step(ddp, opt, s, rank=rank)
    flat = torch.cat([p.detach().flatten() for p in ddp.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    res["ddp_ranks_bitwise_equal"] = all(torch.equal(gathered[0], t) for t in gathered)
    # single process on both ranks' batches: the same mean gradient
    ref = make_model()
    ref_opt = layerdecay.build_optimizer(ref, "adamw", lr=LR, **OPTIONS)
    for s in range(3):
        xs, ys = zip(*(batch(s, rank=r) for r in range(world)), strict=True)
        loss = nn.functional.cross_entropy(ref(torch.cat(xs)), torch.cat(ys))
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
    res["ddp_vs_single_max_diff"] = max_diff(full(ddp.module), full(ref))

    # FSDP2, groups built after sharding: the bare plan (global shapes), trains like one process.
    model = sharded()
    res["fsdp2_plan_equal"] = plan_key(model) == bare_key
    opt = layerdecay.build_optimizer(model, "adamw", lr=LR, **OPTIONS)
    verify(opt, model)
    for s in range(3):
        step(model, opt, s)
    res["fsdp2_vs_single_max_diff"] = max_diff(full(model), reference(3))

    # FSDP2, groups built before sharding: stale tensors, nothing trains; verify names them.
    model = make_model()
    opt = layerdecay.build_optimizer(model, "adamw", lr=LR, **OPTIONS)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    try:
        verify(opt, model)
        res["fsdp2_stale_error"] = None
    except PlanMismatchError as exc:
        res["fsdp2_stale_error"] = str(exc)
    before = full(model)
    for s in range(2):
        step(model, opt, s)
    res["fsdp2_stale_max_change"] = max_diff(full(model), before)

    # torch.distributed.checkpoint: save at step 2, load into a fresh (other seed) model, resume bitwise.
    def build(seed):
        m = sharded(seed)
        o = layerdecay.build_optimizer(m, "adamw", lr=LR, **OPTIONS)
        return m, o, torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.7 ** t)

    model, opt, sched = build(0)
    for s in range(2):
        step(model, opt, s)
        sched.step()
    osd = get_optimizer_state_dict(model, opt)
    res["dcp_group_keys"] = sorted({k for g in osd["param_groups"] for k in g})
    res["dcp_group_names"] = [g.get("group_name") for g in osd["param_groups"]]
    tmp = [tempfile.mkdtemp() if rank == 0 else None]
    dist.broadcast_object_list(tmp)
    dcp.save({"model": get_model_state_dict(model), "optim": osd}, checkpoint_id=tmp[0])
    sched_state = sched.state_dict()
    lrs_at_save = [g["lr"] for g in opt.param_groups]
    for s in range(2, 4):
        step(model, opt, s)
        sched.step()
    uninterrupted = full(model)

    model2, opt2, sched2 = build(1)
    state = {"model": get_model_state_dict(model2), "optim": get_optimizer_state_dict(model2, opt2)}
    dcp.load(state, checkpoint_id=tmp[0])
    set_model_state_dict(model2, state["model"])
    set_optimizer_state_dict(model2, opt2, state["optim"])
    sched2.load_state_dict(sched_state)
    res["dcp_lrs_restored"] = [g["lr"] for g in opt2.param_groups] == lrs_at_save
    res["dcp_group_keys_after_load"] = sorted({k for g in opt2.param_groups for k in g if k != "params"})
    verify(opt2, model2)
    for s in range(2, 4):
        step(model2, opt2, s)
        sched2.step()
    resumed = full(model2)
    res["dcp_resume_bitwise"] = all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)

    # FSDP1 use_orig_params=True: what its flat 1-D views do to the plan.
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    fsdp1 = FSDP(make_model(), use_orig_params=True, device_id=torch.device("cpu"),
                 auto_wrap_policy=ModuleWrapPolicy({Block}))
    key1 = plan_key(fsdp1)
    res["fsdp1_names_equal"] = [k[0] for k in key1] == [k[0] for k in bare_key]
    res["fsdp1_layers_equal"] = [(k[0], k[2], k[3]) for k in key1] == [(k[0], k[2], k[3]) for k in bare_key]
    res["fsdp1_decay_changed"] = [k[0] for k, b in zip(key1, bare_key, strict=False) if k[4] != b[4]]
    res["fsdp1_shapes"] = {k[0]: k[1] for k in key1}
    opt = layerdecay.build_optimizer(fsdp1, "adamw", lr=LR, **OPTIONS)
    before = {n: p.detach().clone() for n, p in fsdp1.named_parameters()}
    for s in range(2):
        step(fsdp1, opt, s)
    res["fsdp1_trains"] = any(not torch.equal(before[n], p) for n, p in fsdp1.named_parameters() if p.numel())

    # FSDP1 and the family plugins: they read the real shapes too, so each family keeps its own recipe.
    res["fsdp1_families"] = {}
    for arch, block in FAMILY_MODELS.items():
        bare_plan = layerdecay.explain(family_model(arch))
        wrapped = FSDP(family_model(arch), use_orig_params=True, device_id=torch.device("cpu"),
                       auto_wrap_policy=ModuleWrapPolicy({block(arch)}))
        plan = layerdecay.explain(wrapped)
        res["fsdp1_families"][arch] = {
            "owner": plan.owner, "bare_owner": bare_plan.owner, "warnings": list(plan.warnings),
            "same_plan": [(r.name, r.layer_id, r.weight_decay) for r in plan.rows]
            == [(r.name, r.layer_id, r.weight_decay) for r in bare_plan.rows],
        }

    # FSDP1 keeps the original Parameter objects: groups planned on the bare model before wrapping stay valid.
    bare = make_model()
    opt = layerdecay.build_optimizer(bare, "adamw", lr=LR, **OPTIONS)
    decays = {n: g["weight_decay"] for g in opt.param_groups for n in g["param_names"]}
    fsdp1 = FSDP(bare, use_orig_params=True, device_id=torch.device("cpu"), auto_wrap_policy=ModuleWrapPolicy({Block}))
    try:
        verify(opt, fsdp1)
        res["fsdp1_prewrap_verify"] = "ok"
    except PlanMismatchError as exc:
        res["fsdp1_prewrap_verify"] = str(exc)
    res["fsdp1_prewrap_decay_ok"] = all((decays[n] > 0) == (n in LINEAR_WEIGHTS) for n in decays)
    before = {n: p.detach().clone() for n, p in fsdp1.named_parameters()}
    for s in range(2):
        step(fsdp1, opt, s)
    res["fsdp1_prewrap_trains"] = any(not torch.equal(before[n], p) for n, p in fsdp1.named_parameters() if p.numel())

    # The FSDP2 example, under this process group.
    example = runpy.run_path(str(EXAMPLE))["main"](steps=2)
    res["example"] = example

    (out / f"rank{rank}.json").write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
