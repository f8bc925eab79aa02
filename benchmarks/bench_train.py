"""Benchmark our LoRA training loop against Hugging Face `Trainer`, in one process.

Both sides train the same model (the bundled SmolLM2-135M-Instruct, fp32, sdpa), with the same
LoRA config (r=8, alpha=16, q_proj/v_proj, seeded init), the same learning rate, batch size and
rows (one epoch over a fixed random subset of sample_data/support_train.jsonl, tokenized once
with the chat template and assistant-only labels). What differs is how batches are made and how
the loss is computed:
- Trainer: its default sampler (random order) and `DataCollatorForSeq2Seq` (pad to the
  longest row of each batch, labels padded with -100), full-vocabulary logits everywhere;
- ours (workbench.train.train): length-grouped batches (and, for comparison, packed blocks),
  logits only at labelled positions.

Prints (never asserts):
1. the per-token loss of both on one fixed batch (eval mode) and their difference;
2. real (non-padding) tokens/s and supervised (assistant) tokens/s of each, tokens actually
   fed to the model (padding included), and the ratio ours / Trainer.

Timing: only optimizer steps count on both sides (forward, backward, optimizer step; ours also
builds its batches inside the step), not model loading or saving. The machine is shared and
its load comes in bursts, so each side runs --repeats times, alternating, on the same batches
in the same order (both are seeded), and each step's best time counts: tokens/s = real tokens
of the epoch / sum over steps of the step's fastest time.

Run: python benchmarks/bench_train.py [--steps 6 --batch-size 8 --repeats 3 --skip-packed
                                      --threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from workbench import train
from workbench.train import Encoded, TrainConfig

DATA = Path(__file__).resolve().parents[1] / "sample_data" / "support_train.jsonl"


def subset(
    n: int, tokenizer, max_seq_len: int, seed: int
) -> tuple[list[list[dict]], list[Encoded]]:
    """Return n random conversations that fit max_seq_len, and their encodings."""
    chats = [json.loads(line)["messages"] for line in DATA.read_text().splitlines()]
    random.Random(seed).shuffle(chats)
    kept, encoded = [], []
    for chat in chats:
        row, note = train.encode_chat(tokenizer, chat, max_seq_len)
        if row is not None and note == "":
            kept.append(chat)
            encoded.append(row)
        if len(kept) == n:
            break
    return kept, encoded


def config(args: argparse.Namespace, batching: str = "grouped") -> TrainConfig:
    """Return the shared training config (our side); Trainer gets the same numbers."""
    return TrainConfig(
        model=args.model,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        learning_rate=2e-4,
        lr_schedule="cosine",
        warmup_ratio=0.0,
        epochs=1,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        val_fraction=0.0,
        eval_every=0,
        checkpoint_every=10_000,
        batching=batching,
        seed=0,
    )


# --- Hugging Face Trainer ---------------------------------------------------------------------


def hf_trainer(args: argparse.Namespace, encoded: list[Encoded], out_dir: str):
    """Return a Trainer on a fresh LoRA model, its collator, and a callback timing its steps."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    model, tokenizer = train.load_base(config(args))
    model = train.add_lora(model, config(args))
    columns = {
        "input_ids": [list(e.input_ids) for e in encoded],
        "attention_mask": [[1] * len(e.input_ids) for e in encoded],
        "labels": [list(e.labels) for e in encoded],
    }

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, *_, **__):
            self.tick = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds.append(time.perf_counter() - self.tick)

    training_args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        max_grad_norm=1.0,
        use_cpu=True,  # fp32; no bf16 and no gradient checkpointing (both off by default)
        save_strategy="no",
        report_to=[],
        logging_steps=10_000,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    timer = StepTimer()
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_dict(columns),
        data_collator=collator,
        callbacks=[timer],
    )
    return trainer, collator, timer


def hf_run(args: argparse.Namespace, encoded: list[Encoded]) -> tuple[list[float], int]:
    """Train one epoch with Trainer; return its step times and the tokens it was fed."""
    with tempfile.TemporaryDirectory() as out:
        trainer, _, timer = hf_trainer(args, encoded, out)
        # Its own loader (same seed) says how many tokens padding to the longest costs.
        fed = sum(int(b["input_ids"].numel()) for b in trainer.get_train_dataloader())
        trainer.train()
        return timer.seconds, fed


# --- ours ---------------------------------------------------------------------------------------


class StepTimes:
    """A job context that keeps each step's time."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def progress(self, step: int, total: int | None = None, **metrics) -> None:
        if "step_seconds" in metrics:
            self.seconds.append(metrics["step_seconds"])

    def log(self, message: str) -> None:
        pass

    def cancelled(self) -> bool:
        return False


def our_run(
    args: argparse.Namespace, chats: list[list[dict]], encoded: list[Encoded], batching: str
) -> tuple[list[float], int]:
    """Train one epoch with workbench.train; return its step times and the tokens it was fed."""
    cfg = config(args, batching)
    lengths = [len(e.input_ids) for e in encoded]
    batches = train.batch_order(lengths, cfg.batch_size, seed=cfg.seed, epoch=0)
    fed = sum(
        int(train.make_batch([encoded[i] for i in b], cfg, 0)["input_ids"].numel()) for b in batches
    )
    timer = StepTimes()
    with tempfile.TemporaryDirectory() as run_dir:
        train.train(cfg, chats, [], run_dir=run_dir, ctx=timer)
    return timer.seconds, fed


# --- loss agreement -------------------------------------------------------------------------------


def loss_agreement(args: argparse.Namespace, encoded: list[Encoded]) -> dict:
    """Return the per-token loss of one fixed batch under Trainer and under our loss."""
    rows = encoded[: args.batch_size]
    with tempfile.TemporaryDirectory() as out:
        trainer, collator, _ = hf_trainer(args, encoded, out)
        model = trainer.model.eval()
        features = [
            {
                "input_ids": list(r.input_ids),
                "attention_mask": [1] * len(r.input_ids),
                "labels": list(r.labels),
            }
            for r in rows
        ]
        n = sum(r.n_supervised for r in rows)
        pad = collator.tokenizer.pad_token_id
        with torch.no_grad():
            theirs = float(trainer.compute_loss(model, collator(features)))
            grouped = float(train.token_loss_sum(model, train.collate(rows, pad))) / n
            packed = float(train.token_loss_sum(model, train.pack(rows, args.max_seq_len, pad))) / n
    return {"trainer": theirs, "ours": grouped, "ours_packed": packed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the default)")
    parser.add_argument("--skip-packed", action="store_true")
    args = parser.parse_args()

    _, tokenizer = train.load_base(config(args))  # sets the default thread count
    if args.threads:
        torch.set_num_threads(args.threads)
    chats, encoded = subset(args.steps * args.batch_size, tokenizer, args.max_seq_len, seed=0)
    lengths = sorted(len(e.input_ids) for e in encoded)
    print(
        f"model {args.model}, {torch.get_num_threads()} threads; {len(encoded)} rows, "
        f"tokens/row median {lengths[len(lengths) // 2]}, max {lengths[-1]}; batch "
        f"{args.batch_size}, {args.steps} steps per run, {args.repeats} runs per side"
    )
    losses = loss_agreement(args, encoded)
    print(
        f"per-token loss on a fixed batch: Trainer {losses['trainer']:.6f}, ours "
        f"{losses['ours']:.6f} (packed {losses['ours_packed']:.6f}); |diff| "
        f"{abs(losses['trainer'] - losses['ours']):.2e}",
        flush=True,
    )
    sides = {
        "trainer": lambda: hf_run(args, encoded),
        "ours_grouped": lambda: our_run(args, chats, encoded, "grouped"),
    }
    if not args.skip_packed:
        sides["ours_packed"] = lambda: our_run(args, chats, encoded, "packed")
    report(encoded, run_sides(sides, args.repeats))


def run_sides(sides: dict, repeats: int) -> dict[str, tuple[list[float], int]]:
    """Run every side `repeats` times, alternating; keep each step's fastest time."""
    best: dict[str, tuple[list[float], int]] = {}
    for repeat in range(repeats):
        for name, run in sides.items():
            seconds, fed = run()
            print(
                f"  run {repeat + 1} {name:13s} {sum(seconds):6.1f} s for {len(seconds)} steps",
                flush=True,
            )
            previous = best.get(name, (seconds, fed))[0]
            best[name] = ([min(a, b) for a, b in zip(previous, seconds, strict=True)], fed)
    return best


def report(encoded: list[Encoded], best: dict[str, tuple[list[float], int]]) -> None:
    """Print tokens/s per side (best step times), padding, and the ratios to Trainer."""
    real = sum(len(e.input_ids) for e in encoded)
    supervised = sum(e.n_supervised for e in encoded)
    print(
        f"{'side':13s} {'tokens/s':>9s} {'supervised/s':>13s} {'fed tokens':>11s} "
        f"{'padding':>8s} {'s/step':>7s}"
    )
    rate = {}
    for name, (seconds, fed) in best.items():
        rate[name] = real / sum(seconds)
        print(
            f"{name:13s} {rate[name]:9.1f} {supervised / sum(seconds):13.1f} {fed:11d} "
            f"{1 - real / fed:8.1%} {sum(seconds) / len(seconds):7.2f}"
        )
    for name in rate:
        if name != "trainer":
            print(f"ratio {name} / trainer: {rate[name] / rate['trainer']:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
