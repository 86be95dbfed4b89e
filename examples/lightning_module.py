"""Lightning: build the optimizer from the inner network in ``configure_optimizers``.

    python examples/lightning_module.py --steps 3

Plan ``self.net``, not ``self``: the LightningModule adds a ``net.`` prefix that timm's ``group_matcher`` and
the family plugins do not expect. Return the scheduler with ``"interval": "step"`` for per-step schedules.
"""

from __future__ import annotations

import argparse

import lightning as L
import timm
import torch

import layerdecay
from layerdecay.training import check_scheduler


def factor(step: int) -> float:
    return 0.9 ** step


class Classifier(L.LightningModule):
    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                                     embed_dim=32, num_heads=2, num_classes=5)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        optimizer = layerdecay.build_optimizer(self.net, "adamw", lr=self.lr, weight_decay=0.05, layer_decay=0.75)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        check_scheduler(scheduler)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def main(steps: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 5, (16,),
                                                                                                 generator=g))
    module = Classifier()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    groups = trainer.optimizers[0].param_groups
    return {"lrs": [g["lr"] for g in groups], "lr_mults": [g["lr_mult"] for g in groups],
            "steps": trainer.global_step, "base_lr": module.lr}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    print(main(parser.parse_args().steps))
