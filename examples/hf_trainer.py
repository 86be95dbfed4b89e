"""Hugging Face ``Trainer`` with layer decay, on a tiny BERT built from a config (no download).

    python examples/hf_trainer.py --steps 3 --mode optimizers

Two ways in: ``optimizers=(optimizer, None)`` (Trainer adds its scheduler, a ``LambdaLR``, which keeps each
group's ratio), or ``optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": groups, ...})``, which replaces
Trainer's own two-group split (decay / no decay, one lr) by layerdecay's groups. Trainer's own
``learning_rate`` and ``weight_decay`` then do not reach the groups: set them in layerdecay's call.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import layerdecay


class TinyTextDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, length: int = 12, vocab: int = 50) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, length), generator=g)
        self.labels = (self.ids[:, 0] > vocab // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def make_model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config)


def main(steps: int = 3, mode: str = "optimizers", warmup: int = 10, lr: float = 1e-3) -> dict:
    model = make_model()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=4, learning_rate=lr,
            lr_scheduler_type="constant_with_warmup", warmup_steps=warmup, report_to=[], save_strategy="no",
            logging_strategy="no", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        )
        if mode == "optimizers":
            optimizer = layerdecay.build_optimizer(model, "adamw", lr=lr, weight_decay=0.01, layer_decay=0.7)
            trainer = Trainer(model=model, args=args, train_dataset=TinyTextDataset(), optimizers=(optimizer, None))
        else:
            groups = layerdecay.param_groups(model, lr=lr, weight_decay=0.01, layer_decay=0.7)
            trainer = Trainer(model=model, args=args, train_dataset=TinyTextDataset(),
                              optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": groups, "lr": lr}))
        trainer.train()
        groups = trainer.optimizer.param_groups
        return {"lrs": [g["lr"] for g in groups], "lr_mults": [g["lr_mult"] for g in groups],
                "weight_decays": [g["weight_decay"] for g in groups], "names": [g["param_names"] for g in groups],
                "steps": trainer.state.global_step}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mode", choices=["optimizers", "optimizer_cls_and_kwargs"], default="optimizers")
    print(main(**vars(parser.parse_args())))
