"""Benchmark the workbench on a CUDA GPU against the same code on the CPU, and against the
libraries people would otherwise use on the same GPU.

Prints (never asserts), per model, one table:
- LoRA training tokens/s (real, non-padding tokens of one epoch over the same rows): ours in
  bf16 and in fp32, HF Trainer with its defaults (fp32), TRL's SFTTrainer with its defaults
  (only when `trl` imports; else the row says skipped), QLoRA (4-bit base, ours) with its peak
  GPU memory, and ours in fp32 on the CPU over fewer rows;
- greedy generation tokens/s: ours batched (batch size auto), ours one row at a time, vLLM
  (only when installed: pip install -e ".[vllm]") and ours batched on the CPU; plus the share of
  answers identical between ours and vLLM;
- embedding texts/s (torch on the GPU; torch and the ONNX fast path on the CPU);
- perplexity+IFD examples/s (both scores, one pass) on the GPU and on the CPU.
Then the issue's targets: training >= TRL's defaults, generation >= 50% of vLLM's tokens/s.

Models: the bundled SmolLM2-135M-Instruct when it is installed; a local folder given with
--model (a folder with only config.json gets random weights of that shape: speed does not
depend on the values); --config-1b, a random ~1B Llama-style model built from a config (no
download). Random models use the bundled tokenizer when it is there, else the tiny test
tokenizer (its 512-token vocabulary makes the LM head cheaper than a real model's: said in the
output). Timings are taken after a warm-up call; training takes each step's best time over
--repeats epochs (as benchmarks/bench_train.py does).

Without a CUDA device it prints "skipped: no CUDA device ..." and exits 0, like the other
benchmarks without their data. --smoke runs every section on a tiny random model on the CPU
in a few seconds, to check the script itself (its numbers mean nothing).

Run: python -u benchmarks/bench_gpu.py [--model FOLDER] [--config-1b] [--no-default]
     [--prompts 64 --max-new-tokens 128 --train-rows 64 --batch-size 8 --repeats 2
      --cpu-rows 8 --texts 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import torch

# This folder is on sys.path when a benchmark runs as a script: share bench_train's step timer.
from bench_train import StepTimes

from workbench import device as D
from workbench import generation, models, vllm_backend
from workbench import score as S
from workbench.embed import embed_texts
from workbench.evaluate import load_eval_model

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "sample_data" / "support_eval.jsonl"
TRAIN = ROOT / "sample_data" / "support_train.jsonl"
Row = tuple[str, float | None, float | None, str]  # (measurement, GPU, CPU, note)


# --- models ---------------------------------------------------------------------------------------

def model_folders(args: argparse.Namespace, work: Path) -> list[tuple[str, Path, str]]:
    """Return (label, folder with weights, note) for every model to measure."""
    found = []
    if not args.no_default:
        try:
            found.append((models.DEFAULT_LM, models.resolve_lm("default"), ""))
        except Exception as err:  # noqa: BLE001 - not installed here: say so, go on
            print(f"default model skipped: {err}")
    if args.model:
        folder, note = with_weights(Path(args.model), work / "model")
        found.append((Path(args.model).name, folder, note))
    if args.config_1b:
        folder, note = with_weights(None, work / "random-1b")
        found.append(("random 1B Llama (from a config)", folder, note))
    return found


def tokenizer_for(folder: Path | None) -> tuple[object, str]:
    """Return a tokenizer with a chat template: the folder's, the bundled model's, or tiny's."""
    from transformers import AutoTokenizer

    for source in ([folder] if folder else []) + [None]:
        try:
            tok = AutoTokenizer.from_pretrained(source) if source else models.load_lm_tokenizer()
        except Exception:  # noqa: BLE001 - not there: try the next source
            continue
        tok.chat_template = tok.chat_template or models.CHATML_TEMPLATE
        return tok, ""
    return models.tiny_tokenizer(), "tiny tokenizer (512-token vocabulary: a cheap LM head)"


def config_1b(vocab_size: int):
    """A ~1.1B-parameter Llama shape (TinyLlama's: 22 layers, hidden 2048, GQA 32/4 heads)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=2048, intermediate_size=5632,
                       num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                       max_position_embeddings=2048, tie_word_embeddings=False)


def tiny_folder(target: Path) -> tuple[Path, str]:
    """The tiny random test model saved as a folder (--smoke)."""
    model, tokenizer = models.tiny_lm(seed=0)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target, "tiny random model: the numbers mean nothing"


def with_weights(folder: Path | None, target: Path) -> tuple[Path, str]:
    """Return a folder with safetensors weights: ``folder`` itself when it has them, else random
    weights of its config's shape (or config_1b's) saved with a tokenizer into ``target``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if folder is not None and any(folder.glob("*.safetensors")):
        return folder, ""
    tokenizer, note = tokenizer_for(folder)
    config = AutoConfig.from_pretrained(folder) if folder else config_1b(len(tokenizer))
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, key, getattr(tokenizer, key) if key != "pad_token_id"
                else tokenizer.pad_token_id or tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    return target, f"random weights, {params:.2f}B parameters" + (f"; {note}" if note else "")


# --- data -----------------------------------------------------------------------------------------

def chats(path: Path, n: int) -> list[list[dict]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"] for line in (lines * (1 + n // len(lines)))[:n]]


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - started


def free_gpu() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- training -------------------------------------------------------------------------------------

def train_config(folder: Path, args: argparse.Namespace, **device_fields):
    """Return our TrainConfig for the benchmark (device, precision, qlora in device_fields)."""
    from workbench.train import TrainConfig

    return TrainConfig(model=str(folder), lora_r=8, lora_alpha=16, target_modules=None,
                       learning_rate=2e-4, warmup_ratio=0.0, epochs=1, batch_size=args.batch_size,
                       max_seq_len=args.max_seq_len, val_fraction=0.0, eval_every=0,
                       checkpoint_every=10_000, seed=0, **device_fields)


def best_steps(run: Callable[[], list[float]], repeats: int) -> float:
    """Return the sum over steps of each step's fastest time across repeats."""
    times = [run() for _ in range(repeats)]
    return sum(min(step) for step in zip(*times))


def ours_training(folder: Path, rows: list, tokens: int, args: argparse.Namespace, *,
                  repeats: int, **fields) -> tuple[float | None, float | None, str]:
    """Return (tokens/s, peak GPU GB, note) of our trainer on the rows."""
    from workbench import train

    config = train_config(folder, args, **fields)

    def once() -> list[float]:
        timer = StepTimes()
        with tempfile.TemporaryDirectory() as run_dir:
            train.train(config, rows, [], run_dir=run_dir, ctx=timer)
        free_gpu()
        return timer.seconds

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        seconds = best_steps(once, repeats)
    except Exception as err:  # noqa: BLE001 - a row that cannot run says why, the rest go on
        return None, None, f"failed: {type(err).__name__}: {str(err)[:120]}"
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return tokens / seconds, peak, ""


class _Timer:
    """A transformers TrainerCallback timing each optimizer step (built lazily: imports)."""

    @staticmethod
    def make():
        from transformers import TrainerCallback

        class StepTimer(TrainerCallback):
            def __init__(self) -> None:
                self.seconds: list[float] = []

            def on_step_begin(self, *_, **__):
                torch.cuda.synchronize()
                self.tick = time.perf_counter()

            def on_step_end(self, *_, **__):
                torch.cuda.synchronize()
                self.seconds.append(time.perf_counter() - self.tick)

        return StepTimer()


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "v_proj"])


def hf_trainer_training(folder: Path, encoded: list, tokens: int, args: argparse.Namespace
                        ) -> tuple[float | None, str]:
    """Return (tokens/s, note) of transformers' Trainer with its defaults (fp32) on the GPU."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    data = Dataset.from_dict({"input_ids": [list(e.input_ids) for e in encoded],
                              "attention_mask": [[1] * len(e.input_ids) for e in encoded],
                              "labels": [list(e.labels) for e in encoded]})
    tokenizer = models.load_lm_tokenizer(folder)

    def once() -> list[float]:
        base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model = get_peft_model(base, lora_config())
        timer = _Timer.make()
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(model=model, train_dataset=data, callbacks=[timer],
                              data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest"),
                              args=TrainingArguments(
                                  output_dir=out, per_device_train_batch_size=args.batch_size,
                                  num_train_epochs=1, learning_rate=2e-4, save_strategy="no",
                                  report_to=[], disable_tqdm=True, seed=0))
            trainer.train()
        del base, model, trainer
        free_gpu()
        return timer.seconds

    return tokens / best_steps(once, args.repeats), "defaults: fp32, no gradient checkpointing"


def trl_training(folder: Path, rows: list, tokens: int, args: argparse.Namespace
                 ) -> tuple[float | None, str]:
    """Return (tokens/s, note) of TRL's SFTTrainer with its defaults, or why it was skipped."""
    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        return None, "skipped: trl is not installed (pip install trl)"
    from datasets import Dataset

    known = {f.name for f in dataclasses.fields(SFTConfig)}
    length = {"max_length": args.max_seq_len} if "max_length" in known else \
        {"max_seq_length": args.max_seq_len}
    data = Dataset.from_dict({"messages": rows})
    tokenizer = models.load_lm_tokenizer(folder)
    settings: dict = {}

    def once() -> list[float]:
        timer = _Timer.make()
        with tempfile.TemporaryDirectory() as out:
            config = SFTConfig(output_dir=out, per_device_train_batch_size=args.batch_size,
                               num_train_epochs=1, learning_rate=2e-4, save_strategy="no",
                               report_to=[], disable_tqdm=True, seed=0, **length)
            # The model by its folder: TRL loads it as its defaults say.
            trainer = SFTTrainer(model=str(folder), args=config, train_dataset=data,
                                 processing_class=tokenizer, peft_config=lora_config(),
                                 callbacks=[timer])
            trainer.train()
            settings.update(bf16=config.bf16, gradient_checkpointing=config.gradient_checkpointing)
        del trainer
        free_gpu()
        return timer.seconds

    seconds = best_steps(once, args.repeats)
    return tokens / seconds, "defaults: " + ", ".join(f"{k}={v}" for k, v in settings.items())


def training_rows(folder: Path, args: argparse.Namespace) -> list[Row]:
    from workbench import train

    tokenizer = models.load_lm_tokenizer(folder)
    rows, encoded = [], []
    for chat in chats(TRAIN, 4 * args.train_rows):
        row, note = train.encode_chat(tokenizer, chat, args.max_seq_len)
        if row is not None and not note:
            rows.append(chat)
            encoded.append(row)
        if len(rows) == args.train_rows:
            break
    tokens = sum(len(e.input_ids) for e in encoded)
    cpu_rows = rows[:args.cpu_rows]
    cpu_tokens = sum(len(e.input_ids) for e in encoded[:args.cpu_rows])
    out: list[Row] = []
    gpu = "cuda:0" if not args.smoke else "cpu"
    for label, fields in (("ours bf16", {"device": gpu, "precision": "bf16", "qlora": False}),
                          ("ours fp32", {"device": gpu, "precision": "fp32", "qlora": False})):
        rate, _, note = ours_training(folder, rows, tokens, args, repeats=args.repeats, **fields)
        cpu = None
        if label == "ours fp32":
            cpu, _, _ = ours_training(folder, cpu_rows, cpu_tokens, args, repeats=1,
                                      device="cpu", precision="fp32", qlora=False)
        out.append((f"train tokens/s, {label}", rate, cpu, note))
    if args.smoke:
        return out
    rate, peak, note = ours_training(folder, rows, tokens, args, repeats=args.repeats,
                                     device=gpu, precision="bf16", qlora=True)
    out.append(("train tokens/s, ours QLoRA (4-bit)", rate, None,
                note or (f"peak GPU memory {peak:.2f} GB" if peak is not None else "")))
    for label, fn in (("HF Trainer", lambda: hf_trainer_training(folder, encoded, tokens, args)),
                      ("TRL SFTTrainer", lambda: trl_training(folder, rows, tokens, args))):
        try:
            rate, note = fn()
        except Exception as err:  # noqa: BLE001
            rate, note = None, f"failed: {type(err).__name__}: {str(err)[:120]}"
        out.append((f"train tokens/s, {label}", rate, None, note))
    return out


# --- generation -----------------------------------------------------------------------------------

def generated_rate(generate: Callable[..., list], *args, **kwargs) -> tuple[float, list]:
    """Return (generated tokens/s, generations) of a warm call of generate(*args, **kwargs)."""
    answers, seconds = timed(lambda: generate(*args, **kwargs))
    return sum(g.n_tokens for g in answers) / seconds, answers


def generation_rows(folder: Path, args: argparse.Namespace) -> list[Row]:
    conversations = [generation.prompt_messages(c) for c in chats(EVAL, args.prompts)]
    config = generation.GenerationConfig(max_new_tokens=args.max_new_tokens)
    few = conversations[:args.cpu_rows]
    lm = load_eval_model(str(folder), device="cpu" if args.smoke else "cuda:0")  # bf16 if it can
    generation.generate_batch(*lm, conversations[:4], config)  # warm-up
    batched, ours = generated_rate(generation.generate_batch, *lm, conversations, config)
    single, _ = generated_rate(generation.generate_batch, *lm, few,
                               dataclasses.replace(config, batch_size=1))
    rows = generation.batch_rows(lm[0], config, 512)
    lm = None
    free_gpu()
    cpu, _ = generated_rate(generation.generate_batch,
                            *load_eval_model(str(folder), device="cpu"), few, config)
    out: list[Row] = [
        ("generate tokens/s, ours batched", batched, cpu,
         f"batch size auto: up to {rows} rows here, 16 on the CPU"),
        ("generate tokens/s, ours one row at a time", single, None,
         f"{len(few)} prompts, batch_size=1")]
    if not vllm_backend.installed() or args.smoke:
        out.append(("generate tokens/s, vLLM", None, None,
                    f"skipped: vllm is not installed ({vllm_backend.VLLM_INSTALL})"))
        return out
    engine = vllm_backend.load(str(folder), device="cuda:0")
    generation.generate_vllm(engine, conversations[:4], config)  # warm-up
    theirs_rate, theirs = generated_rate(generation.generate_vllm, engine, conversations, config)
    same = sum(a.token_ids == b.token_ids for a, b in zip(ours, theirs)) / len(ours)
    out.append(("generate tokens/s, vLLM", theirs_rate, None,
                f"{same:.0%} of greedy answers identical to ours; ours/vLLM "
                f"{batched / theirs_rate:.2f} (target >= 0.50)"))
    engine = None
    free_gpu()
    return out


# --- embeddings and model scores ------------------------------------------------------------------

def embedders(smoke: bool) -> tuple[Callable[[str], object], str]:
    """Return (device -> embedder, label): the bundled MiniLM, else a random one of its shape."""
    if models._default_embedder_dir() is not None and not smoke:
        return (lambda device: models.load_embedder(device=device, backend="torch",
                                                    cached=False)), models.DEFAULT_EMBEDDER
    shape = {} if smoke else {"hidden_size": 384, "layers": 6, "heads": 12,
                              "intermediate_size": 1536}
    return (lambda device: models.tiny_embedder(**shape).to(device)), \
        "random BERT of MiniLM's shape (tiny tokenizer)"


def embedding_rows(args: argparse.Namespace) -> list[Row]:
    texts = [c[-1]["content"] for c in chats(EVAL, args.texts)]
    make, label = embedders(args.smoke)
    rates = {}
    for device, n in (("cpu" if args.smoke else "cuda:0", len(texts)), ("cpu", args.texts // 10)):
        encoder = make(device)
        embed_texts(texts[:64], encoder)  # warm-up
        _, seconds = timed(lambda encoder=encoder, n=n: embed_texts(texts[:n], encoder))
        rates[device] = n / seconds
        del encoder
        free_gpu()
    gpu, cpu = rates.get("cuda:0", rates["cpu"]), rates["cpu"]
    out: list[Row] = [("embed texts/s (torch)", gpu, cpu, label)]
    if models._default_embedder_dir() is not None and not args.smoke:
        onnx = models.load_embedder(device="cpu", backend="onnx", cached=False)
        _, seconds = timed(lambda: embed_texts(texts[:args.texts // 10], onnx))
        out.append(("embed texts/s, CPU fast path (ONNX)", None, args.texts // 10 / seconds,
                    "what the CPU runs by default"))
    return out


def scoring_rows(folder: Path, args: argparse.Namespace) -> list[Row]:
    frame = pd.DataFrame({"messages": chats(EVAL, args.prompts)})
    rates = {}
    for device, n in (("cpu" if args.smoke else "cuda:0", len(frame)), ("cpu", args.cpu_rows)):
        lm = S.scoring_lm(str(folder), device)
        S.model_scores(frame.head(4), lm=lm)  # warm-up
        _, seconds = timed(lambda lm=lm, n=n: S.model_scores(frame.head(n), lm=lm))
        rates[device] = n / seconds
    note = "fp32 on both (cached scores are keyed without the device)"
    return [("perplexity+IFD examples/s", rates.get("cuda:0", rates["cpu"]), rates["cpu"], note)]


# --- the report -----------------------------------------------------------------------------------

def show(label: str, note: str, rows: list[Row], where: str) -> None:
    print(f"\n== {label}" + (f" ({note})" if note else ""))
    print(f"{'measurement':44} {where:>12} {'CPU':>10} {'ratio':>7}  note")
    for name, gpu, cpu, remark in rows:
        ratio = f"{gpu / cpu:6.1f}x" if gpu and cpu else ""
        print(f"{name:44} {_number(gpu, 12)} {_number(cpu, 10)} {ratio:>7}  {remark}")
    targets(rows)


def _number(value: float | None, width: int) -> str:
    return f"{value:{width}.1f}" if value is not None else f"{'-':>{width}}"


def targets(rows: list[Row]) -> None:
    by = {name: gpu for name, gpu, _, _ in rows}
    ours = max((by.get(f"train tokens/s, ours {p}") or 0) for p in ("bf16", "fp32"))
    trl = by.get("train tokens/s, TRL SFTTrainer")
    if trl:
        print(f"target training >= TRL defaults: ours/TRL {ours / trl:.2f} "
              f"({'met' if ours >= trl else 'NOT met'})")
    vllm, batched = by.get("generate tokens/s, vLLM"), by.get("generate tokens/s, ours batched")
    if vllm and batched:
        print(f"target generation >= 50% of vLLM: {batched / vllm:.2f} "
              f"({'met' if batched >= 0.5 * vllm else 'NOT met'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a local model folder (config.json alone is enough)")
    parser.add_argument("--config-1b", action="store_true",
                        help="also a random ~1B Llama-style model built from a config")
    parser.add_argument("--no-default", action="store_true", help="skip the bundled model")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--train-rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpu-rows", type=int, default=8,
                        help="rows (prompts, examples, training rows) the CPU baselines run")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true",
                        help="check the script on the CPU with a tiny random model")
    args = parser.parse_args()
    if args.smoke:
        args.no_default, args.prompts, args.max_new_tokens, args.texts = True, 6, 4, 40
        args.train_rows, args.cpu_rows, args.repeats, args.batch_size = 4, 2, 1, 2
    elif not torch.cuda.is_available():
        print("skipped: no CUDA device (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}): run this on a machine with an NVIDIA GPU and a CUDA "
              "build of torch")
        return 0
    where = "cpu (smoke)" if args.smoke else D.describe("cuda:0")
    print(f"device: {where}; CPU baselines on {D.describe('cpu')}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as work:
        found = model_folders(args, Path(work))
        if args.smoke:
            found.append(("tiny (smoke)", *tiny_folder(Path(work) / "tiny")))
        for label, folder, note in found:
            rows = [*training_rows(folder, args), *generation_rows(folder, args),
                    *scoring_rows(folder, args)]
            show(label, note, rows, "GPU" if not args.smoke else "smoke")
            free_gpu()
    show("embeddings", "", embedding_rows(args), "GPU" if not args.smoke else "smoke")
    return 0


if __name__ == "__main__":
    sys.exit(main())
