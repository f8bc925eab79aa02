"""LoRA fine-tuning: a typed config, assistant-only labels from the chat template, a plain loop.

The pieces, in the order a run uses them:

- ``TrainConfig``: every option as a typed field; bad values and combinations raise
  ``ConfigError`` naming the fields. Saved as ``train_config.json`` in the run folder.
- data: each conversation is rendered with the model's chat template; labels are the token ids
  of every assistant turn (content and end-of-turn token) and -100 elsewhere. Rows whose
  assistant tokens are all cut by ``max_seq_len`` are skipped and counted in the log.
- batches: rows are grouped by length (shuffled, sorted within mega-batches, batches shuffled),
  so a batch is padded to nearly nothing; ``batching="packed"`` instead concatenates a batch's
  rows into ``max_seq_len`` blocks with per-row position ids, which transformers turns into a
  block-diagonal causal mask (no row attends to another).
- the loop reads top to bottom: AdamW on the LoRA weights, gradient accumulation, warmup +
  schedule, clipping, loss = summed token losses / supervised tokens of the whole step,
  periodic validation and atomic checkpoints (adapter, optimizer, scheduler, RNG, step).
  The data order is a pure function of (seed, epoch), so a checkpoint only needs the step.
- ``train(config, rows, val_rows, run_dir=..., ctx=...)``: the loop over rows. The job around it
  (tasks.py, "train") snapshots the dataset versions into the run folder with one short store
  read, then never touches the store again. Training a run folder that already holds a
  checkpoint continues from it: that is how ``training.resume`` works.

Run folder: ``train_config.json``, ``data/`` (train.jsonl, val.jsonl, versions.json),
``checkpoints/step-NNNNNN/``, ``adapter/`` (peft: adapter_model.safetensors +
adapter_config.json), ``metrics.json``; the jobs module adds config.json, events.jsonl
(one event per step: loss, val_loss, lr, tokens_per_s, eta_s), log.txt and status.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import math
import os
import random
import shutil
import signal
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from workbench import device as D
from workbench.exceptions import Cancelled, ConfigError, NotFoundError, WorkbenchError
from workbench.generation import GenerationConfig, generate_texts
from workbench.lazy import lazy_module, no_grad
from workbench.models import LoadedLM, load_lm, supports_assistant_mask, tiny_lm

# Imported where a function first uses them: the Train page reads TrainConfig without torch.
torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Schedule = Literal["cosine", "linear", "constant"]
Batching = Literal["grouped", "packed"]
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]
Checkpointing = Literal["auto", "on", "off"]
Messages = Sequence[dict[str, str]]

IGNORE = -100  # label of a token that carries no loss (what torch's cross_entropy skips)
TINY = "tiny"  # model name of the random 2-layer test model (models.tiny_lm(seed=0))
# Rows per length-sorted mega-batch, in batches (as transformers' LengthGroupedSampler).
MEGA_BATCHES = 50
# The LoRA targets we choose per architecture; peft's table and "every linear layer" follow.
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "smollm3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
}
# Models whose causal-LM head is exactly lm_head(trunk(x)): for these the loss computes logits
# only where a label is, skipping the prompt and padding (the vocabulary projection is ~20% of
# a small model's compute). Others (logit soft-capping, scaling) take the full forward.
_HIDDEN_STATE_LOSS = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "smollm3", "gpt2", "gpt_neox", "phi3"}
)
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.json"
RUNTIME_FILE = "runtime.json"  # the device, its name and the precision a run resolved to
DATA_DIR = "data"


# ---------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Options of one LoRA training run; invalid values raise ConfigError naming the fields.

    model: "default" (bundled SmolLM2-135M-Instruct), a local model folder, a hub id, or
    "tiny" (a random 2-layer model for tests). target_modules None picks per architecture.
    max_steps, when set, overrides epochs. val_fraction is the seeded share of the training
    rows held out for validation when no validation version is given (0 = no validation).
    eval_every 0 validates only at the start and the end.

    device: "auto" (CUDA, else MPS, else CPU: workbench.device), "cpu", "cuda", "cuda:N", "mps".
    precision: "auto" is the device's best (fp32 on the CPU, bf16 on a GPU that has it, fp16
    with loss scaling on an older GPU). qlora loads the base in 4-bit NF4 (CUDA only).
    gradient_checkpointing "auto": off on the CPU (it costs ~30% there), on for QLoRA and when
    the base's weights take over half the GPU's memory. batch_tokens, when set, also caps a
    micro-batch's padded tokens (rows x longest row): long rows then come fewer to a batch.
    dtype is the older name of precision ("float32", "bfloat16"): still read, saved as None.
    """

    model: str = "default"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None
    learning_rate: float = 2e-4
    lr_schedule: Schedule = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    epochs: float | None = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    max_seq_len: int = 512
    batching: Batching = "grouped"
    val_fraction: float = 0.1
    max_val_rows: int = 64
    eval_every: int = 20
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    precision: PrecisionChoice = "auto"
    qlora: bool = False
    gradient_checkpointing: Checkpointing = "auto"
    batch_tokens: int | None = None
    dtype: str | None = None  # deprecated: read into precision

    def __post_init__(self) -> None:
        self._read_old_dtype()
        if isinstance(self.precision, str):
            self.precision = D.precision_name(self.precision) or self.precision  # type: ignore[assignment]
        if isinstance(self.target_modules, (tuple, str)):
            self.target_modules = (
                [self.target_modules]
                if isinstance(self.target_modules, str)
                else list(self.target_modules)
            )
        problems = _config_problems(self)
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))

    def _read_old_dtype(self) -> None:
        # Configs saved before `precision` carry dtype "float32" or "bfloat16": that was the
        # precision they ran in, so a resumed old run keeps it.
        if self.dtype is None:
            return
        old = D.precision_name(self.dtype)
        if old is None or old == "auto":
            raise ConfigError(f"invalid training config: dtype {self.dtype!r} is not one of "
                              "float32, bfloat16, float16 (dtype is deprecated: use precision)")
        if self.precision not in ("auto", old) and \
                D.precision_name(self.precision) != old:
            raise ConfigError(f"invalid training config: dtype {self.dtype!r} and precision "
                              f"{self.precision!r} disagree; drop dtype (deprecated)")
        self.precision, self.dtype = old, None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Writes the config as JSON to path (atomically) and returns the path."""
        return _write_json(Path(path), self.to_dict())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Returns a config from a dict, rejecting unknown fields by name."""
        if not isinstance(values, dict):
            raise ConfigError(f"training config must be a dict of options, got {type(values)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown training option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Returns the config saved at path."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _config_problems(c: TrainConfig) -> list[str]:
    checks: list[tuple[bool, str]] = [
        (
            isinstance(c.model, str) and bool(c.model.strip()),
            "model must be 'default', 'tiny', a model folder or a hub id",
        ),
        (_is_int(c.lora_r) and c.lora_r >= 1, "lora_r must be an integer >= 1"),
        (_is_num(c.lora_alpha) and c.lora_alpha > 0, "lora_alpha must be > 0"),
        (_is_num(c.lora_dropout) and 0 <= c.lora_dropout < 1, "lora_dropout must be in [0, 1)"),
        (
            c.target_modules is None
            or (
                isinstance(c.target_modules, list)
                and bool(c.target_modules)
                and all(isinstance(m, str) and m for m in c.target_modules)
            ),
            "target_modules must be None (per-architecture default) or a non-empty list of names",
        ),
        (_is_num(c.learning_rate) and 0 < c.learning_rate < 1, "learning_rate must be in (0, 1)"),
        (c.lr_schedule in get_args(Schedule), f"lr_schedule must be one of {get_args(Schedule)}"),
        (_is_num(c.warmup_ratio) and 0 <= c.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
        (_is_num(c.weight_decay) and c.weight_decay >= 0, "weight_decay must be >= 0"),
        (
            _is_num(c.max_grad_norm) and c.max_grad_norm >= 0,
            "max_grad_norm must be >= 0 (0 turns clipping off)",
        ),
        (c.epochs is None or (_is_num(c.epochs) and c.epochs > 0), "epochs must be > 0 or None"),
        (
            c.max_steps is None or (_is_int(c.max_steps) and c.max_steps >= 1),
            "max_steps must be an integer >= 1 or None",
        ),
        (c.epochs is not None or c.max_steps is not None, "set epochs or max_steps"),
        (_is_int(c.batch_size) and c.batch_size >= 1, "batch_size must be an integer >= 1"),
        (_is_int(c.grad_accum) and c.grad_accum >= 1, "grad_accum must be an integer >= 1"),
        (_is_int(c.max_seq_len) and c.max_seq_len >= 16, "max_seq_len must be an integer >= 16"),
        (c.batching in get_args(Batching), f"batching must be one of {get_args(Batching)}"),
        (_is_num(c.val_fraction) and 0 <= c.val_fraction < 0.5, "val_fraction must be in [0, 0.5)"),
        (_is_int(c.max_val_rows) and c.max_val_rows >= 1, "max_val_rows must be an integer >= 1"),
        (_is_int(c.eval_every) and c.eval_every >= 0, "eval_every must be an integer >= 0"),
        (
            _is_int(c.checkpoint_every) and c.checkpoint_every >= 1,
            "checkpoint_every must be an integer >= 1",
        ),
        (
            _is_int(c.keep_checkpoints) and c.keep_checkpoints >= 1,
            "keep_checkpoints must be an integer >= 1",
        ),
        (_is_int(c.seed) and c.seed >= 0, "seed must be an integer >= 0"),
        (
            c.precision in get_args(PrecisionChoice),
            f"precision must be one of {get_args(PrecisionChoice)}",
        ),
        (_valid_device(c.device), "device must be auto, cpu, cuda, cuda:N or mps"),
        (isinstance(c.qlora, bool), "qlora must be true or false"),
        (
            c.gradient_checkpointing in get_args(Checkpointing),
            f"gradient_checkpointing must be one of {get_args(Checkpointing)}",
        ),
        (
            c.batch_tokens is None or (_is_int(c.batch_tokens) and c.batch_tokens >= 16),
            "batch_tokens must be None (rows per batch only) or an integer >= 16",
        ),
        (
            not (c.qlora and c.precision == "fp32"),
            "qlora computes in bf16 or fp16: set precision to auto, bf16 or fp16",
        ),
    ]
    return [message for ok, message in checks if not ok]


def _valid_device(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    name = value.strip().lower()
    return name in D.DEVICE_CHOICES or (name.startswith("cuda:") and name[5:].isdigit())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------- data: labels from the template


@dataclass(frozen=True)
class Encoded:
    """One tokenized conversation: input ids, and labels (-100 where no loss is taken)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def n_supervised(self) -> int:
        """Returns the number of tokens that carry loss."""
        return sum(label != IGNORE for label in self.labels)


def assistant_token_mask(
    tokenizer: PreTrainedTokenizerBase, messages: Messages
) -> tuple[list[int], list[int]]:
    """Returns the chat-template token ids of a conversation and a 0/1 mask of assistant tokens.

    Uses the template's {% generation %} marks when it has them; otherwise renders each prefix
    of the conversation to find where every assistant turn starts and ends.
    """
    if supports_assistant_mask(tokenizer):
        out = tokenizer.apply_chat_template(
            list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        return list(out["input_ids"]), list(out["assistant_masks"])
    return _mask_from_prefixes(tokenizer, messages)


def _mask_from_prefixes(
    tokenizer: PreTrainedTokenizerBase, messages: Messages
) -> tuple[list[int], list[int]]:
    def render(turns: Messages, prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(
            list(turns), tokenize=False, add_generation_prompt=prompt
        )

    text = render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start, through = render(messages[:i], prompt=True), render(messages[: i + 1])
        if not (text.startswith(start) and text.startswith(through)):
            raise ConfigError(
                "the model's chat template renders a conversation differently from its prefixes, "
                "so assistant tokens cannot be found; add {% generation %} marks to the template"
            )
        # The whitespace after the end-of-turn token belongs to the template, not the answer:
        # generation stops at that token, so the model never needs to produce it.
        spans.append((len(start), len(through.rstrip())))
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("a template without {% generation %} marks needs a fast tokenizer")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [
        int(any(s < end and e > begin for begin, end in spans)) for s, e in enc["offset_mapping"]
    ]
    return list(enc["input_ids"]), mask


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, max_seq_len: int
) -> tuple[Encoded | None, str]:
    """Returns (encoded row, "") or (None, why it was skipped) for one conversation."""
    if not any(m["role"] == "assistant" for m in messages):
        return None, "no_assistant_turn"
    ids, mask = assistant_token_mask(tokenizer, messages)
    truncated = len(ids) > max_seq_len
    ids, mask = ids[:max_seq_len], mask[:max_seq_len]
    labels = [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]
    # The first token is never predicted; -100 there also keeps packed rows from leaking
    # a label across a row boundary (the previous row's last token would "predict" it).
    labels[0] = IGNORE
    if not any(label != IGNORE for label in labels):
        return None, "assistant_truncated_away" if truncated else "no_assistant_tokens"
    return Encoded(tuple(ids), tuple(labels)), "truncated" if truncated else ""


def encode_rows(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Messages], max_seq_len: int
) -> tuple[list[Encoded], Counter[str]]:
    """Returns the encoded rows that carry loss and counts of skipped (and truncated) rows."""
    rows, counts = [], Counter[str]()
    for messages in conversations:
        row, note = encode_chat(tokenizer, messages, max_seq_len)
        if note:
            counts[note] += 1
        if row is not None:
            rows.append(row)
    return rows, counts


def split_rows(
    rows: Sequence[Messages], fraction: float, seed: int
) -> tuple[list[Messages], list[Messages]]:
    """Returns (train, validation) with a seeded share of the rows held out for validation."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = min(len(rows) - 1, math.ceil(len(rows) * fraction)) if fraction > 0 else 0
    held = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in order[:n_val]]


# ---------------------------------------------------------------- batches


def batch_order(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int,
    batch_tokens: int | None = None,
) -> list[list[int]]:
    """Returns one epoch's batches of row indices: shuffled, grouped by length, batches shuffled.

    A batch holds at most batch_size rows and, when batch_tokens is set, at most batch_tokens
    padded tokens (rows x its longest row; a row longer than the budget goes alone).
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * MEGA_BATCHES
    batches = []
    for start in range(0, len(order), mega):
        # Longest first inside a mega-batch, so a batch holds rows of nearly equal length.
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += _cut(chunk, lengths, batch_size, batch_tokens)
    rng.shuffle(batches)
    return batches


def _cut(
    ordered: list[int], lengths: Sequence[int], batch_size: int, batch_tokens: int | None
) -> list[list[int]]:
    if batch_tokens is None:
        return [ordered[j : j + batch_size] for j in range(0, len(ordered), batch_size)]
    batches: list[list[int]] = []
    for i in ordered:  # longest first: a batch's first row sets its padded width
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and (len(last) + 1) * lengths[last[0]] <= batch_tokens:
            last.append(i)
        else:
            batches.append([i])
    return batches


def micro_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, skip: int = 0,
    batch_tokens: int | None = None,
) -> Iterator[list[int]]:
    """Yields batches of row indices forever, epoch after epoch, after skipping the first `skip`."""
    epoch, position = 0, 0
    while True:
        for batch in batch_order(lengths, batch_size, seed=seed, epoch=epoch,
                                 batch_tokens=batch_tokens):
            if position >= skip:
                yield batch
            position += 1
        epoch += 1


def collate(rows: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Returns a right-padded batch: input_ids, attention_mask, labels (-100 on padding)."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack(rows: Sequence[Encoded], max_seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Returns rows packed into blocks of <= max_seq_len tokens: input_ids, position_ids, labels.

    Position ids restart at 0 for every row; with no attention mask, transformers reads the
    restarts as row boundaries and builds a block-diagonal causal mask.
    """
    blocks = _first_fit(rows, max_seq_len)
    width = max(sum(len(r.input_ids) for r in block) for block in blocks)
    ids = torch.full((len(blocks), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    positions = torch.zeros_like(ids)
    for i, block in enumerate(blocks):
        at = 0
        for row in block:
            n = len(row.input_ids)
            ids[i, at : at + n] = torch.tensor(row.input_ids)
            labels[i, at : at + n] = torch.tensor(row.labels)
            positions[i, at : at + n] = torch.arange(n)
            at += n
        # The padding tail restarts at 0 as well: a segment of its own that no row attends to.
        positions[i, at:] = torch.arange(width - at)
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def _first_fit(rows: Sequence[Encoded], capacity: int) -> list[list[Encoded]]:
    blocks: list[list[Encoded]] = []
    used: list[int] = []
    for row in sorted(rows, key=lambda r: -len(r.input_ids)):  # longest first packs tighter
        n = len(row.input_ids)
        fit = next((k for k, u in enumerate(used) if u + n <= capacity), None)
        if fit is None:
            blocks.append([row])
            used.append(n)
        else:
            blocks[fit].append(row)
            used[fit] += n
    return blocks


def make_batch(
    rows: Sequence[Encoded], config: TrainConfig, pad_id: int
) -> dict[str, torch.Tensor]:
    """Returns the model inputs for rows under the config's batching."""
    if config.batching == "packed":
        return pack(rows, config.max_seq_len, pad_id)
    return collate(rows, pad_id)


# ---------------------------------------------------------------- model and loss


@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes, resolved once from its config on this machine."""

    device: str  # "cpu", "cuda:0", "mps"
    device_name: str  # workbench.device.describe: "cuda:0 (NVIDIA H100, 80 GB)"
    precision: str  # "fp32", "bf16", "fp16"
    qlora: bool = False
    gradient_checkpointing: bool = False

    @property
    def autocast(self) -> bool:
        """Whether forwards run under torch.autocast (a GPU in bf16 or fp16)."""
        return self.device != "cpu" and self.precision != "fp32"

    @property
    def loss_scaling(self) -> bool:
        """Whether the loss is scaled (fp16 on CUDA: its gradients underflow otherwise)."""
        return self.device.startswith("cuda") and self.precision == "fp16"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CPU = Runtime("cpu", "cpu", "fp32")  # what a run without a resolved runtime computes on


def resolve_runtime(config: TrainConfig, hardware: D.Hardware | None = None) -> Runtime:
    """Returns the config's device, precision and 4-bit choice resolved on this machine.

    Raises ConfigError with a one-line reason for an absent device, an impossible precision
    (bf16 on a GPU without it) or QLoRA without CUDA.
    """
    device = D.resolve_device(config.device, hardware)
    precision = D.resolve_precision(config.precision, device, hardware)
    if config.qlora:
        D.check_qlora(device, hardware)
    checkpointing = config.gradient_checkpointing == "on" or (
        config.gradient_checkpointing == "auto" and config.qlora
    )
    return Runtime(device, D.describe(device, hardware), precision, config.qlora, checkpointing)


def load_base(config: TrainConfig, runtime: Runtime = CPU) -> LoadedLM:
    """Returns a private (model, tokenizer) copy of the config's base model on the runtime's
    device: in 4-bit NF4 for QLoRA, else in the runtime's precision."""
    if runtime.qlora:
        return _load_4bit(config.model, runtime)
    dtype = D.torch_dtype(runtime.precision)
    if config.model == TINY:
        model, tokenizer = tiny_lm(seed=0)
        model = model.to(dtype)
    else:
        model, tokenizer = load_lm(config.model, dtype=dtype, device=runtime.device, cached=False)
    return model.to(runtime.device), tokenizer


def _load_4bit(name: str, runtime: Runtime) -> LoadedLM:
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from workbench.models import _prepare_tokenizer, resolve_lm

    folder = _tiny_folder() if name == TINY else resolve_lm(name)
    compute = D.torch_dtype(runtime.precision)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    options: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True}
    tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(folder, **options))
    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=quantization, dtype=compute, device_map={"": runtime.device},
        attn_implementation="sdpa", use_safetensors=True, **options,
    )
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@functools.lru_cache(maxsize=1)
def _tiny_folder() -> Path:
    # 4-bit loading goes through from_pretrained: the tiny model needs a folder to load from.
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="workbench-tiny-"))
    model, tokenizer = tiny_lm(seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def prepare_for_training(model: Any, runtime: Runtime) -> Any:
    """Returns the base ready for LoRA on the runtime: k-bit preparation for QLoRA (norms in
    fp32, frozen base), gradient checkpointing when the runtime asks for it."""
    kwargs = {"use_reentrant": False}  # frozen inputs: the reentrant variant would drop grads
    if runtime.qlora:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=runtime.gradient_checkpointing,
            gradient_checkpointing_kwargs=kwargs,
        )
    if runtime.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def _weights_fill_gpu(model: Any, runtime: Runtime) -> bool:
    gpu = D.probe().gpu(runtime.device)
    return gpu is not None and model.get_memory_footprint() > gpu.memory_bytes / 2


def default_target_modules(model: PreTrainedModel) -> list[str]:
    """Returns the LoRA target module names for a model's architecture (all linear as fallback)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT

    kind = model.config.model_type
    if kind in DEFAULT_TARGET_MODULES:
        return list(DEFAULT_TARGET_MODULES[kind])
    if kind in PEFT:
        return list(PEFT[kind])
    return sorted(_linear_names(model))


def _linear_names(model: PreTrainedModel) -> set[str]:
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
    }


def add_lora(model: PreTrainedModel, config: TrainConfig) -> PreTrainedModel:
    """Returns the model wrapped with fresh LoRA layers (seeded) per the config."""
    from peft import LoraConfig, get_peft_model

    targets = config.target_modules or default_target_modules(model)
    missing = sorted(set(targets) - _linear_names(model))
    if missing:
        raise ConfigError(
            f"target_modules {missing} match no linear layer of this {model.config.model_type} "
            f"model; its linear layers are: {', '.join(sorted(_linear_names(model)))}"
        )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(config.seed)  # LoRA's A matrices are random: same seed, same start
    with _quiet_peft():
        wrapped = get_peft_model(model, lora)
    for param in wrapped.parameters():
        if param.requires_grad:  # LoRA weights train in fp32 over a bf16/fp16/4-bit base
            param.data = param.data.float()
    return wrapped


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    # peft 0.21 asks transformers 5 a deprecated question on every wrap; the warning is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        yield


def token_loss_sum(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Returns the summed next-token cross-entropy over the batch's labelled tokens."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    batch = {k: v.to(causal.device) for k, v in batch.items()}
    labels = batch["labels"][:, 1:]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if causal.config.model_type in _HIDDEN_STATE_LOSS:
        hidden = causal.base_model(**inputs, use_cache=False).last_hidden_state[:, :-1]
        keep = labels != IGNORE
        logits = causal.get_output_embeddings()(hidden[keep])
        return F.cross_entropy(logits.float(), labels[keep], reduction="sum")
    logits = model(**inputs, use_cache=False).logits[:, :-1]
    return F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
    )


def autocast(runtime: Runtime) -> contextlib.AbstractContextManager[Any]:
    """Returns the context a forward runs in: torch.autocast in bf16/fp16 on a GPU, else none."""
    if not runtime.autocast:
        return contextlib.nullcontext()
    kind = runtime.device.split(":", 1)[0]
    return torch.autocast(kind, dtype=D.torch_dtype(runtime.precision))


@no_grad
def mean_token_loss(
    model: PreTrainedModel, rows: Sequence[Encoded], config: TrainConfig, pad_id: int,
    runtime: Runtime = CPU,
) -> float:
    """Returns the per-token loss of the model over rows (eval mode, length-sorted batches)."""
    was_training = model.training
    model.eval()
    ordered = sorted(rows, key=lambda r: len(r.input_ids))
    total, count = 0.0, 0
    for start in range(0, len(ordered), config.batch_size):
        chunk = ordered[start : start + config.batch_size]
        with autocast(runtime):
            total += float(token_loss_sum(model, make_batch(chunk, config, pad_id)))
        count += sum(r.n_supervised for r in chunk)
    model.train(was_training)
    return total / max(count, 1)


# ---------------------------------------------------------------- checkpoints


def checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Returns the run's complete checkpoints, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    found = (
        [p for p in folder.glob("step-*") if (p / "state.json").is_file()]
        if folder.is_dir()
        else []
    )
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def last_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """Returns the run's newest complete checkpoint, or None."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def _save_checkpoint(run: _Run, rng: torch.Tensor) -> Path:
    folder = run.run_dir / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{run.state['step']:06d}"
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        run.model.save_pretrained(tmp)
        saved = {
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "torch_rng": rng,
        }
        if run.scaler is not None:
            saved["scaler"] = run.scaler.state_dict()
        torch.save(saved, tmp / "trainer_state.pt")
        _write_json(tmp / "state.json", run.state)  # written last: it marks a complete folder
    except BaseException:
        # A full disk (or a kill of the job's thread) must not leave half a checkpoint taking
        # the space that a resume needs; the earlier checkpoints stay as they were.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)  # a kill leaves either the old set of checkpoints or the new one
    for old in checkpoints(run.run_dir)[: -run.config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(path: Path, run: _Run) -> dict[str, Any]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = run.runtime.device
    set_peft_model_state_dict(run.model, load_file(path / "adapter_model.safetensors", device))
    # weights_only: tensors and plain containers only, never arbitrary pickled objects.
    saved = torch.load(path / "trainer_state.pt", weights_only=True, map_location=device)
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    if run.scaler is not None and "scaler" in saved:
        run.scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"].cpu())
    return json.loads((path / "state.json").read_text())


def _clean_partial(run_dir: Path) -> None:
    for tmp in (run_dir / CHECKPOINTS).glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed save


# ---------------------------------------------------------------- the loop


def start_phase(ctx: Any, name: str, total: int | None = None, step: int = 0) -> None:
    """Tell a job context the phase its work enters (jobs.JobContext.phase: "training" at
    ``step`` of ``total``); a context without phases (the CLI's inline one, a stand-in) is
    told nothing. The one phase hook of the steps and the tasks."""
    phase = getattr(ctx, "phase", None)
    if phase is not None:
        phase(name, total, step)


class _Quiet:
    """A stand-in job context for training outside a job (no events, no log file)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def progress(self, step: int, total: int | None = None, **metrics: Any) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def cancelled(self) -> bool:
        return False

    def rewind(self, step: int) -> None:
        pass


@dataclass
class _Data:
    train: list[Encoded]
    val: list[Encoded]
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class _Run:
    """Everything the loop works with; `state` is what a checkpoint saves besides weights."""

    config: TrainConfig
    model: Any
    optimizer: Any
    scheduler: Any
    data: _Data
    total: int
    steps_per_epoch: int
    pad_id: int
    run_dir: Path
    ctx: Any
    runtime: Runtime = CPU
    scaler: Any = None  # torch.amp.GradScaler for fp16 on CUDA
    state: dict[str, Any] = field(
        default_factory=lambda: {
            "step": 0,
            "tokens": 0,
            "supervised_tokens": 0,
            "train_seconds": 0.0,
            "loss": None,
            "val_loss": None,
            "val_loss_start": None,
        }
    )


def train(
    config: TrainConfig,
    rows: Sequence[Messages],
    val_rows: Sequence[Messages] | None = None,
    *,
    run_dir: str | os.PathLike[str],
    ctx: Any = None,
) -> dict[str, Any]:
    """Trains a LoRA adapter into run_dir, continuing from its last checkpoint; returns metrics.

    val_rows None holds out config.val_fraction of rows (seeded). ctx is a jobs.JobContext (or
    anything with progress/log/cancelled, and phase to name what it is doing); cancelling
    saves a checkpoint and raises Cancelled.
    """
    started, run_dir = time.time(), Path(run_dir)
    runtime = resolve_runtime(config)  # a refusal (no GPU for QLoRA, ...) comes before any file
    run_dir.mkdir(parents=True, exist_ok=True)
    config.to_json(run_dir / CONFIG_FILE)
    _write_json(run_dir / RUNTIME_FILE, runtime.to_dict())
    ctx = ctx or _Quiet(run_dir)
    ctx.log(f"device {runtime.device_name}, {runtime.precision}"
            + (", 4-bit NF4 base (QLoRA)" if runtime.qlora else ""))
    start_phase(ctx, "loading model")
    D.enable_fast_matmul(runtime.device)
    if runtime.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(runtime.device)  # the peak reported is this run's
    run = _setup_within_memory(config, rows, val_rows, run_dir, ctx, runtime)
    start_phase(ctx, "training", run.total, run.state["step"])
    failure = None
    try:
        with _readable_memory_errors(run):
            if run.state["step"] == 0 and run.data.val:
                run.state["val_loss_start"] = _validate(run)
                run.ctx.log(f"validation loss before training: {run.state['val_loss']:.4f}")
                run.ctx.progress(0, run.total, val_loss=run.state["val_loss"])
            _run_steps(run)
    except torch.OutOfMemoryError:
        failure = _out_of_memory_message(run)
    if failure is not None:  # out of the handler: its traceback no longer holds the model
        _release(run)
        run.ctx.log(failure)
        raise WorkbenchError(failure)
    return _finish(run, started)


def _setup_within_memory(config: TrainConfig, rows: Sequence[Messages],
                         val_rows: Sequence[Messages] | None, run_dir: Path, ctx: Any,
                         runtime: Runtime) -> _Run:
    failure = None
    try:
        return _setup(config, rows, val_rows, run_dir, ctx, runtime)
    except torch.OutOfMemoryError:
        failure = (f"not enough memory on {runtime.device_name} to load {config.model} (peak "
                   f"{_peak_gib(runtime):.2f} GiB allocated): "
                   + ("use a smaller model" if runtime.qlora else "use QLoRA (--qlora)"))
    _free_device(runtime)  # out of the handler: the half-loaded model is garbage now
    raise WorkbenchError(failure)


def _peak_gib(runtime: Runtime) -> float:
    cuda = runtime.device.startswith("cuda")
    return torch.cuda.max_memory_allocated(runtime.device) / 2**30 if cuda else 0.0


def _free_device(runtime: Runtime) -> None:
    gc.collect()
    if runtime.device.startswith("cuda"):
        torch.cuda.empty_cache()


def _out_of_memory_message(run: _Run) -> str:
    c, rt = run.config, run.runtime
    longest = max((len(r.input_ids) for r in run.data.train), default=c.max_seq_len)
    budget = c.batch_tokens or c.batch_size * longest
    smaller = max(16, budget // 2)
    tips = [f"lower batch_tokens to {smaller} (--batch-tokens {smaller})"]
    if not rt.gradient_checkpointing:
        tips.append("turn on gradient checkpointing (--gradient-checkpointing on)")
    if not rt.qlora:
        tips.append("use QLoRA (--qlora)")
    # Worded without "out of memory": jobs would wrap such a message in a generic one.
    return (
        f"not enough memory on {rt.device_name} at step {run.state['step'] + 1} (peak "
        f"{_peak_gib(rt):.2f} GiB allocated, micro-batches of up to {budget} tokens): "
        + "; or ".join(tips) + "; the run can resume from its last checkpoint"
    )


def _release(run: _Run) -> None:
    """Frees the run's model and optimizer state on its device for the next job."""
    run.model = run.optimizer = run.scheduler = run.scaler = None
    _free_device(run.runtime)


def _setup(
    config: TrainConfig,
    rows: Sequence[Messages],
    val_rows: Sequence[Messages] | None,
    run_dir: Path,
    ctx: Any,
    runtime: Runtime = CPU,
) -> _Run:
    model, tokenizer = load_base(config, runtime)
    _check_fits(config, model)
    if config.gradient_checkpointing == "auto" and _weights_fill_gpu(model, runtime):
        runtime = dataclasses.replace(runtime, gradient_checkpointing=True)
        ctx.log("gradient checkpointing on: the base model's weights fill over half the GPU")
    model = add_lora(prepare_for_training(model, runtime), config)
    _log_model(ctx, config, model, runtime)
    data = _prepare_data(config, tokenizer, rows, val_rows, ctx)
    lengths = [len(r.input_ids) for r in data.train]
    per_epoch = len(batch_order(lengths, config.batch_size, seed=config.seed, epoch=0,
                                batch_tokens=config.batch_tokens))
    steps_per_epoch = math.ceil(per_epoch / config.grad_accum)
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    run = _Run(
        config,
        model,
        optimizer,
        _scheduler(config, optimizer, total),
        data,
        total,
        steps_per_epoch,
        tokenizer.pad_token_id,
        run_dir,
        ctx,
        runtime,
        torch.amp.GradScaler("cuda") if runtime.loss_scaling else None,
    )
    _clean_partial(run_dir)
    resume_from = last_checkpoint(run_dir)
    if resume_from is not None:
        run.state = _load_checkpoint(resume_from, run)
        ctx.log(f"resumed from {resume_from.name} (step {run.state['step']} of {total})")
    # Steps after the checkpoint are trained again (all of them without one): drop their old
    # events so the curves show each step once.
    if hasattr(ctx, "rewind"):
        ctx.rewind(run.state["step"] if resume_from is not None else -1)
    tokens = f" (<= {config.batch_tokens} tokens)" if config.batch_tokens else ""
    ctx.log(
        f"plan: {total} steps ({steps_per_epoch} per epoch), batch {config.batch_size}{tokens} x "
        f"accumulation {config.grad_accum}, {config.batching} batches, lr "
        f"{config.learning_rate} {config.lr_schedule}"
    )
    return run


def _check_fits(config: TrainConfig, model: PreTrainedModel) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and config.max_seq_len > limit:
        raise ConfigError(
            f"max_seq_len ({config.max_seq_len}) exceeds the model's max_position_embeddings "
            f"({limit}); lower max_seq_len"
        )


def _log_model(ctx: Any, config: TrainConfig, model: Any, runtime: Runtime) -> None:
    trainable, total = model.get_nb_trainable_parameters()
    targets = ",".join(sorted(model.peft_config["default"].target_modules))
    weights = "4-bit NF4" if runtime.qlora else runtime.precision
    ctx.log(
        f"model {config.model} ({total / 1e6:.1f}M parameters, {weights} on {runtime.device}); "
        f"LoRA r={config.lora_r} alpha={config.lora_alpha} on {targets}: {trainable:,} "
        f"trainable ({100 * trainable / total:.2f}%); gradient checkpointing "
        f"{'on' if runtime.gradient_checkpointing else 'off'}"
    )
    if runtime.precision == "bf16" and runtime.device == "cpu":
        ctx.log("warning: bfloat16 is about 12x slower than float32 on this kind of CPU")


def _prepare_data(
    config: TrainConfig,
    tokenizer: Any,
    rows: Sequence[Messages],
    val_rows: Sequence[Messages] | None,
    ctx: Any,
) -> _Data:
    if val_rows is None:
        rows, val_rows = split_rows(rows, config.val_fraction, config.seed)
    train_set, skipped = encode_rows(tokenizer, rows, config.max_seq_len)
    val_set, val_skipped = encode_rows(
        tokenizer, list(val_rows)[: config.max_val_rows], config.max_seq_len
    )
    counts = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none"
    ctx.log(
        f"data: {len(rows)} training rows -> {len(train_set)} used; skipped or truncated: "
        f"{counts}; validation rows: {len(val_set)}"
    )
    if not train_set:
        raise WorkbenchError(
            f"no training row has an assistant token within max_seq_len={config.max_seq_len} "
            f"({counts}); raise max_seq_len or check that rows have assistant turns"
        )
    tokens = [len(r.input_ids) for r in train_set]
    ctx.log(
        f"tokens per row: mean {sum(tokens) / len(tokens):.0f}, max {max(tokens)}; "
        f"supervised tokens {sum(r.n_supervised for r in train_set):,}"
    )
    skipped_all = dict(skipped) | {f"val_{k}": v for k, v in val_skipped.items()}
    return _Data(train_set, val_set, skipped_all)


def _scheduler(config: TrainConfig, optimizer: Any, total: int) -> Any:
    from transformers import get_scheduler

    name = "constant_with_warmup" if config.lr_schedule == "constant" else config.lr_schedule
    warmup = math.ceil(config.warmup_ratio * total)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def _run_steps(run: _Run) -> None:
    config, state = run.config, run.state
    lengths = [len(r.input_ids) for r in run.data.train]
    # The data order is a function of (seed, epoch): resuming only skips what was consumed.
    batches = micro_batches(
        lengths, config.batch_size, seed=config.seed, skip=state["step"] * config.grad_accum,
        batch_tokens=config.batch_tokens,
    )
    # A checkpoint saves the RNG as it was when its step ended, even if the next step had
    # started drawing dropout masks when it was cancelled.
    saved_step, rng = state["step"], torch.get_rng_state()
    session = (time.perf_counter(), state["step"])
    run.model.train()
    with _stop_on_sigterm(enabled=not isinstance(run.ctx, _Quiet)) as stopping:
        try:
            while state["step"] < run.total:
                step_rows = [
                    [run.data.train[i] for i in next(batches)] for _ in range(config.grad_accum)
                ]
                metrics = _train_step(run, step_rows, lambda: run.ctx.cancelled() or stopping())
                rng = torch.get_rng_state()
                metrics["eta_s"] = _eta(run, session)
                if run.data.val and _due(state["step"], config.eval_every, run.total):
                    metrics["val_loss"] = _validate(run)
                if state["step"] % config.checkpoint_every == 0 or state["step"] == run.total:
                    _save_checkpoint(run, rng)
                    saved_step = state["step"]
                _log_step(run, metrics)
                run.ctx.progress(state["step"], run.total, **metrics)
        except Cancelled:
            if state["step"] > saved_step:  # keep the work done since the last checkpoint
                _save_checkpoint(run, rng)
            run.ctx.log(
                f"stopped at step {state['step']} of {run.total}; resume continues from there"
            )
            raise


def _train_step(run: _Run, step_rows: list[list[Encoded]], stop: Any) -> dict[str, float]:
    state, optimizer = run.state, run.optimizer
    # Per-token loss over the whole step: each micro-batch adds (its token-loss sum) / n.
    n_supervised = sum(r.n_supervised for rows in step_rows for r in rows)
    tick, loss_sum, tokens = time.perf_counter(), 0.0, 0
    for rows in step_rows:
        if stop():
            optimizer.zero_grad(set_to_none=True)  # a partial step is dropped, not applied
            raise Cancelled()
        batch = make_batch(rows, run.config, run.pad_id)
        with autocast(run.runtime):
            loss = token_loss_sum(run.model, batch)
        scaled = loss / n_supervised
        (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        loss_sum += float(loss.detach())
        tokens += sum(len(r.input_ids) for r in rows)  # real tokens, not padding
    if run.scaler is not None:
        run.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if run.config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.config.max_grad_norm)
    lr = run.scheduler.get_last_lr()[0]
    if run.scaler is not None:
        run.scaler.step(optimizer)  # skips the step when a gradient overflowed
        run.scaler.update()
    else:
        optimizer.step()
    run.scheduler.step()
    optimizer.zero_grad(set_to_none=True)

    state["step"] += 1
    state["tokens"] += tokens
    state["supervised_tokens"] += n_supervised
    seconds = time.perf_counter() - tick
    state["train_seconds"] += seconds
    state["loss"] = loss_sum / n_supervised
    return {
        "loss": state["loss"],
        "lr": lr,
        "step_seconds": seconds,
        "epoch": state["step"] / run.steps_per_epoch,
        "tokens_per_s": state["tokens"] / state["train_seconds"],
        "supervised_tokens_per_s": state["supervised_tokens"] / state["train_seconds"],
    }


def _validate(run: _Run) -> float:
    run.state["val_loss"] = mean_token_loss(
        run.model, run.data.val, run.config, run.pad_id, run.runtime
    )
    return run.state["val_loss"]


def _eta(run: _Run, session: tuple[float, int]) -> float:
    # From this process's own pace: jobs' ETA spans the downtime before a resume.
    started, first_step = session
    done = run.state["step"] - first_step
    return (run.total - run.state["step"]) * (time.perf_counter() - started) / max(done, 1)


def _due(step: int, every: int, total: int) -> bool:
    return step == total or (every > 0 and step % every == 0)


def _log_step(run: _Run, metrics: dict[str, float]) -> None:
    step, total = run.state["step"], run.total
    if step == total or step % max(1, total // 20) == 0 or "val_loss" in metrics:
        val = f", val loss {metrics['val_loss']:.4f}" if "val_loss" in metrics else ""
        run.ctx.log(
            f"step {step}/{total}: loss {metrics['loss']:.4f}{val}, lr "
            f"{metrics['lr']:.2e}, {metrics['tokens_per_s']:.0f} tokens/s, ETA "
            f"{metrics['eta_s']:.0f} s"
        )


@contextlib.contextmanager
def _readable_memory_errors(run: _Run) -> Iterator[None]:
    # torch on CPU says "DefaultCPUAllocator: can't allocate memory"; name the fix instead.
    try:
        yield
    except torch.OutOfMemoryError:
        raise  # the GPU's own: train() reports it with the peak memory and frees the device
    except (RuntimeError, MemoryError) as err:
        text = str(err).lower()
        if isinstance(err, MemoryError) or "out of memory" in text or "can't allocate" in text:
            c = run.config
            raise WorkbenchError(
                f"not enough memory at step {run.state['step'] + 1} with batch_size="
                f"{c.batch_size} and max_seq_len={c.max_seq_len}: lower batch_size (raise "
                "grad_accum to keep the effective batch) or max_seq_len; the run can resume "
                "from its last checkpoint"
            ) from err
        raise


@contextlib.contextmanager
def _stop_on_sigterm(enabled: bool) -> Iterator[Any]:
    # jobs.cancel sends SIGTERM when a step outlasts its grace period: finish the current
    # micro-batch, save a checkpoint and stop, instead of dying with the step's work lost.
    flag = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.set())
    try:
        yield flag.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


def _finish(run: _Run, started: float) -> dict[str, Any]:
    adapter = _save_adapter(run.model, run.run_dir / ADAPTER)
    state, seconds = run.state, run.state["train_seconds"]
    metrics = {
        "steps": state["step"],
        "total_steps": run.total,
        "train_loss": state["loss"],
        "val_loss": state["val_loss"],
        "val_loss_start": state["val_loss_start"],
        "tokens": state["tokens"],
        "supervised_tokens": state["supervised_tokens"],
        "tokens_per_s": state["tokens"] / seconds if seconds else None,
        "supervised_tokens_per_s": state["supervised_tokens"] / seconds if seconds else None,
        "train_seconds": seconds,
        "wall_seconds": time.time() - started,
        "train_rows": len(run.data.train),
        "val_rows": len(run.data.val),
        "skipped": run.data.skipped,
        "adapter": str(adapter),
        "device": run.runtime.device,
        "device_name": run.runtime.device_name,
        "precision": run.runtime.precision,
        "qlora": run.runtime.qlora,
        "gradient_checkpointing": run.runtime.gradient_checkpointing,
    }
    if run.runtime.device.startswith("cuda"):
        metrics["peak_memory_gb"] = _peak_gib(run.runtime)
    _write_json(run.run_dir / METRICS_FILE, metrics)
    run.ctx.log(
        f"done: {state['step']} steps, train loss {state['loss']:.4f}, val loss "
        f"{state['val_loss']}; adapter in {adapter}"
    )
    return metrics


def _save_adapter(model: Any, target: Path) -> Path:
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------- using the adapter


def load_adapter_model(run_dir: str | os.PathLike[str], runtime: Runtime = CPU) -> LoadedLM:
    """Returns (base model + the run's adapter, tokenizer) in eval mode; the last checkpoint
    stands in when the run has not finished. The base loads per runtime (by default fp32 on
    the CPU, unquantised even for a QLoRA run: the adapter fits either base)."""
    from peft import PeftModel

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise NotFoundError(f"{run_dir} is not a training run (no {CONFIG_FILE})")
    adapter = run_dir / ADAPTER if (run_dir / ADAPTER).is_dir() else last_checkpoint(run_dir)
    if adapter is None:
        raise NotFoundError(f"run {run_dir.name} has no adapter and no checkpoint yet")
    model, tokenizer = load_base(TrainConfig.from_json(run_dir / CONFIG_FILE), runtime)
    with _quiet_peft():
        return PeftModel.from_pretrained(model, adapter).eval(), tokenizer


def merge_and_export(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Writes the base model with the adapter merged in as a full model folder; returns it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"export folder {out_dir} is not empty; choose a new folder")
    model, tokenizer = load_adapter_model(run_dir, merge_runtime(run_dir))
    merged = model.merge_and_unload()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(tmp, out_dir)
    return out_dir


def merge_runtime(run_dir: str | os.PathLike[str]) -> Runtime:
    """Returns how a run's base loads for merging: never in 4-bit (a merge into NF4 weights
    would round the update away), on the CPU, in the precision the run trained in (bf16 for a
    QLoRA run on an Ampere GPU, fp32 for a CPU run)."""
    precision = _read_runtime(Path(run_dir)).get("precision")
    return Runtime("cpu", D.describe("cpu"), precision if precision in D.PRECISIONS else "fp32")


def _read_runtime(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / RUNTIME_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}  # a run from before runtime.json trained in fp32 on the CPU


def _loaded(model: str | os.PathLike[str] | LoadedLM) -> LoadedLM:
    if isinstance(model, tuple):
        return model
    path = Path(model)
    if (path / CONFIG_FILE).is_file():
        stamp = max((p.stat().st_mtime for p in path.rglob("adapter_model.safetensors")), default=0)
        return _cached_adapter(str(path.resolve()), stamp)
    if str(model) == TINY:
        return tiny_lm(seed=0)
    return load_lm(model)


@functools.lru_cache(maxsize=2)
def _cached_adapter(run_dir: str, stamp: float) -> LoadedLM:
    return load_adapter_model(run_dir)  # stamp: a newer adapter file is a new cache entry


def generate_many(
    model: str | os.PathLike[str] | LoadedLM,
    conversations: Sequence[Messages],
    *,
    max_new_tokens: int = 128,
    greedy: bool = True,
    temperature: float = 0.7,
    batch_size: int = 8,
    seed: int = 0,
) -> list[str]:
    """Returns the assistant reply to each conversation from a run folder, model name or pair
    (generation.py's decoding loop; sampling, when greedy=False, is seeded by ``seed``)."""
    lm, tokenizer = _loaded(model)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        **({} if greedy else {"do_sample": True, "temperature": temperature, "seed": seed}),
    )
    return generate_texts(lm, tokenizer, conversations, config)


def generate(
    model: str | os.PathLike[str] | LoadedLM,
    messages: Messages,
    *,
    max_new_tokens: int = 128,
    greedy: bool = True,
    temperature: float = 0.7,
) -> str:
    """Returns the assistant reply to one conversation from a run folder, model name or pair."""
    return generate_many(
        model, [messages], max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature
    )[0]


def _write_json(path: Path, value: Any) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    return path
