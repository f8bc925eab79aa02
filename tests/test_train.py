"""LoRA training: config, assistant-only labels, batches, the loop, resume, jobs, the real model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from workbench import jobs, models, train, training
from workbench.exceptions import ConfigError, WorkbenchError
from workbench.schema import Example
from workbench.store import Store
from workbench.train import IGNORE, TrainConfig

# ChatML without {% generation %} marks: the mask must come from rendering prefixes.
PLAIN_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MULTI_TURN = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What does the cat read?"},
    {"role": "assistant", "content": "The cat reads a short book."},
    {"role": "user", "content": "And my friend?"},
    {"role": "assistant", "content": "My friend writes a long letter."},
]
_SUBJECTS = ("The cat", "A small dog", "My friend", "The teacher", "Our team", "She", "They")
_OBJECTS = ("a short book", "the red door", "every question", "the data set", "a long letter")


def rows(n: int = 24) -> list[list[dict[str, str]]]:
    """Short single- and multi-turn chats in the tiny tokenizer's vocabulary, varied lengths."""
    out = []
    for i in range(n):
        s, o = _SUBJECTS[i % len(_SUBJECTS)], _OBJECTS[i % len(_OBJECTS)]
        chat = [
            {"role": "user", "content": f"What does {s.lower()} find? " * (1 + i % 3)},
            {"role": "assistant", "content": f"Yes! {s} finds {o}."},
        ]
        if i % 4 == 0:
            chat += [
                {"role": "user", "content": "And then?"},
                {"role": "assistant", "content": f"Then {s.lower()} reads {o}."},
            ]
        out.append(chat)
    return out


def tiny_config(**overrides: Any) -> TrainConfig:
    """A config that trains the tiny model in a second: few steps, a high learning rate."""
    values = dict(
        model="tiny",
        max_steps=6,
        batch_size=4,
        learning_rate=5e-3,
        warmup_ratio=0.0,
        checkpoint_every=2,
        eval_every=3,
        val_fraction=0.2,
        max_seq_len=128,
    )
    return TrainConfig(**(values | overrides))


class Recorder:
    """A job context that records events and log lines; optionally stops or crashes at a step."""

    def __init__(
        self, run_dir: Path, *, cancel_after: int | None = None, crash_at: int | None = None
    ) -> None:
        self.run_dir, self.events, self.lines = run_dir, [], []
        self.cancel_after, self.crash_at = cancel_after, crash_at

    def progress(self, step: int, total: int | None = None, **metrics: Any) -> None:
        if step == self.crash_at:
            raise RuntimeError("simulated crash")
        self.events.append({"step": step, "total": total, **metrics})

    def log(self, message: str) -> None:
        self.lines.append(message)

    def cancelled(self) -> bool:
        done = self.events[-1]["step"] if self.events else 0
        return self.cancel_after is not None and done >= self.cancel_after


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = adapter_weights(a), adapter_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0, msg=key)


@pytest.fixture(autouse=True)
def one_thread(request, monkeypatch):
    """Tiny models run on one thread: on a shared 2-core machine two threads wait on each
    other (10x slower for ops this small). Job workers read OMP_NUM_THREADS."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    return models.tiny_lm()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted tiny run (6 steps) that resumed runs must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference")
    train.train(tiny_config(), rows(), run_dir=run_dir)
    return run_dir


# ---------------------------------------------------------------- config


def test_config_defaults_are_valid_and_round_trip_through_json(tmp_path):
    config = TrainConfig()
    assert (config.lora_r, config.lora_alpha, config.batch_size) == (8, 16.0, 8)
    assert (config.device, config.precision, config.qlora) == ("auto", "auto", False)
    assert (config.gradient_checkpointing, config.batch_tokens, config.dtype) == ("auto", None, None)
    path = config.to_json(tmp_path / "c.json")
    assert TrainConfig.from_json(path) == config
    assert json.loads(path.read_text())["lr_schedule"] == "cosine"


def test_configs_saved_before_precision_still_load(tmp_path):
    # Every config saved before `precision` existed carries dtype; it ran in that precision.
    old = tiny_config().to_dict() | {"dtype": "float32"}
    for name in ("device", "precision", "qlora", "gradient_checkpointing", "batch_tokens"):
        old.pop(name)
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps(old))
    config = TrainConfig.from_json(path)
    assert (config.precision, config.dtype, config.device) == ("fp32", None, "auto")
    assert TrainConfig(dtype="bfloat16").precision == "bf16"
    assert TrainConfig(precision="bfloat16").precision == "bf16"  # the aliases read too
    with pytest.raises(ConfigError, match="dtype 'float32' and precision 'bf16' disagree"):
        TrainConfig(dtype="float32", precision="bf16")
    with pytest.raises(ConfigError, match="dtype 'int8' is not one of"):
        TrainConfig(dtype="int8")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lora_alpha": 0}, "lora_alpha must be > 0"),
        ({"epochs": None}, "set epochs or max_steps"),
        ({"val_fraction": 0.5}, r"val_fraction must be in \[0, 0.5\)"),
        ({"lr_schedule": "cosine_restarts"}, "lr_schedule must be one of"),
        ({"batch_size": 8.0}, "batch_size must be an integer"),
        ({"target_modules": []}, "target_modules must be"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"batching": "padded"}, "batching must be one of"),
        ({"precision": "int4"}, "precision must be one of"),
        ({"device": "tpu"}, "device must be auto, cpu, cuda, cuda:N or mps"),
        ({"device": "cuda:x"}, "device must be"),
        ({"qlora": "yes"}, "qlora must be true or false"),
        ({"gradient_checkpointing": "maybe"}, "gradient_checkpointing must be one of"),
        ({"batch_tokens": 8}, "batch_tokens must be None"),
        ({"qlora": True, "precision": "fp32"}, "qlora computes in bf16 or fp16"),
    ],
)
def test_bad_config_names_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_all_problems_are_reported_at_once_and_unknown_fields_are_named():
    with pytest.raises(ConfigError) as err:
        TrainConfig(lora_r=0, learning_rate=-1.0)
    assert "lora_r" in str(err.value) and "learning_rate" in str(err.value)
    with pytest.raises(ConfigError, match="unknown training option.*lora_rank"):
        TrainConfig.from_dict({"lora_rank": 4})


def test_target_modules_default_per_architecture_and_bad_names_are_listed(tiny):
    from transformers import GPT2Config, GPT2LMHeadModel

    assert train.default_target_modules(tiny[0]) == ["q_proj", "v_proj"]
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300))
    assert train.default_target_modules(gpt2) == ["c_attn"]
    model, _ = models.tiny_lm()
    with pytest.raises(ConfigError, match="match no linear layer.*q_proj"):
        train.add_lora(model, TrainConfig(model="tiny", target_modules=["query"]))


# ---------------------------------------------------------------- labels


def supervised_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t in encoded.labels if t != IGNORE])


def test_labels_cover_every_assistant_turn_and_nothing_else(tiny):
    _, tokenizer = tiny
    encoded, note = train.encode_chat(tokenizer, MULTI_TURN, max_seq_len=512)
    assert note == ""
    assert supervised_text(tokenizer, encoded) == (
        "The cat reads a short book.<|im_end|>My friend writes a long letter.<|im_end|>"
    )
    assert encoded.labels[0] == IGNORE and len(encoded.labels) == len(encoded.input_ids)
    # every labelled position holds its own input token (the model shifts them)
    assert all(lab in (IGNORE, t) for t, lab in zip(encoded.input_ids, encoded.labels, strict=True))


def test_template_without_generation_marks_gives_the_same_mask(tiny):
    _, tokenizer = tiny
    plain = models.tiny_tokenizer()
    plain.chat_template = PLAIN_CHATML
    assert not models.supports_assistant_mask(plain)
    for chat in (MULTI_TURN, MULTI_TURN[1:3], rows()[0]):
        marked_ids, marked_mask = train.assistant_token_mask(tokenizer, chat)
        plain_ids, plain_mask = train.assistant_token_mask(plain, chat)
        assert plain_ids == marked_ids
        assert plain_mask == marked_mask


def test_truncated_and_empty_rows_are_skipped_and_counted(tiny):
    _, tokenizer = tiny
    long_prompt = [
        {"role": "user", "content": "The cat reads a short book. " * 40},
        {"role": "assistant", "content": "Yes."},
    ]
    cut_answer = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "The cat reads a short book. " * 40},
    ]
    no_answer = [{"role": "user", "content": "Hello!"}]
    encoded, counts = train.encode_rows(
        tokenizer, [long_prompt, cut_answer, no_answer, MULTI_TURN[1:3]], max_seq_len=64
    )
    assert len(encoded) == 2 and all(len(e.input_ids) <= 64 for e in encoded)
    assert counts == {"assistant_truncated_away": 1, "truncated": 1, "no_assistant_turn": 1}
    ctx = Recorder(Path("."))
    train._prepare_data(tiny_config(max_seq_len=64), tokenizer, [long_prompt, MULTI_TURN], [], ctx)
    assert any("assistant_truncated_away 1" in line for line in ctx.lines)


def test_split_is_seeded_and_disjoint():
    data = rows(20)
    a_train, a_val = train.split_rows(data, 0.2, seed=1)
    assert (len(a_train), len(a_val)) == (16, 4)
    assert train.split_rows(data, 0.2, seed=1) == (a_train, a_val)
    assert train.split_rows(data, 0.2, seed=2)[1] != a_val
    assert sorted(map(str, a_train + a_val)) == sorted(map(str, data))


# ---------------------------------------------------------------- batches


def test_batches_cover_each_row_once_per_epoch_and_group_lengths():
    lengths = [(i * 37) % 101 + 10 for i in range(200)]
    batches = train.batch_order(lengths, 8, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert train.batch_order(lengths, 8, seed=3, epoch=0) == batches
    assert train.batch_order(lengths, 8, seed=3, epoch=1) != batches
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.05 * sum(lengths)  # grouped: almost no padding
    stream = train.micro_batches(lengths, 8, seed=3, skip=30)  # 25 batches per epoch
    assert next(stream) == train.batch_order(lengths, 8, seed=3, epoch=1)[5]


def test_packed_rows_never_attend_to_each_other(tiny):
    model, tokenizer = tiny
    encoded, _ = train.encode_rows(tokenizer, rows(5), max_seq_len=128)
    packed = train.pack(encoded, max_seq_len=512, pad_id=tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        together = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits[0]
        order = sorted(encoded, key=lambda r: -len(r.input_ids))  # pack's first-fit order
        at = 0
        for row in order:
            alone = model(input_ids=torch.tensor([row.input_ids])).logits[0]
            torch.testing.assert_close(
                together[at : at + len(row.input_ids)], alone, atol=1e-5, rtol=1e-4
            )
            at += len(row.input_ids)
    assert int((packed["labels"] != IGNORE).sum()) == sum(r.n_supervised for r in encoded)


def test_pack_respects_max_seq_len_and_loss_matches_padded_batches(tiny):
    model, tokenizer = tiny
    encoded, _ = train.encode_rows(tokenizer, rows(8), max_seq_len=128)
    packed = train.pack(encoded, max_seq_len=128, pad_id=tokenizer.pad_token_id)
    assert packed["input_ids"].shape[1] <= 128 and packed["input_ids"].shape[0] > 1
    padded = train.collate(encoded, tokenizer.pad_token_id)
    # no label on a row's first token (nor on the padding tail, which restarts at 0 too)
    assert (packed["labels"][packed["position_ids"] == 0] == IGNORE).all()
    assert int((packed["labels"] != IGNORE).sum()) == int((padded["labels"] != IGNORE).sum())
    with torch.no_grad():
        a, b = train.token_loss_sum(model, packed), train.token_loss_sum(model, padded)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_loss_is_the_per_token_loss_of_a_plain_forward(tiny):
    model, tokenizer = tiny
    encoded, _ = train.encode_rows(tokenizer, rows(6), max_seq_len=128)
    batch = train.collate(encoded, tokenizer.pad_token_id)
    n = sum(e.n_supervised for e in encoded)
    with torch.no_grad():
        ours = train.token_loss_sum(model, batch) / n
        reference = model(**batch).loss  # transformers: mean over shifted, labelled tokens
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- training


def test_training_lowers_the_loss_and_writes_the_run_folder(reference):
    metrics = json.loads((reference / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["val_loss"] < metrics["val_loss_start"]
    assert metrics["tokens_per_s"] > 0 and metrics["train_rows"] + metrics["val_rows"] == 24
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {
        p.name for p in (reference / "adapter").iterdir()
    }
    assert TrainConfig.from_json(reference / "train_config.json") == tiny_config()
    assert [c.name for c in train.checkpoints(reference)] == ["step-000004", "step-000006"]


def test_progress_events_carry_the_live_metrics(tmp_path):
    ctx = Recorder(tmp_path)
    train.train(tiny_config(max_steps=4), rows(), run_dir=tmp_path, ctx=ctx)
    assert [e["step"] for e in ctx.events] == [0, 1, 2, 3, 4]
    assert "val_loss" in ctx.events[0] and "val_loss" in ctx.events[-1]
    assert {"loss", "lr", "tokens_per_s", "eta_s", "epoch"} <= ctx.events[1].keys()
    assert ctx.events[-1]["eta_s"] == 0 and all(e["total"] == 4 for e in ctx.events)
    assert any(line.startswith("data:") for line in ctx.lines)


def test_crash_then_resume_equals_an_uninterrupted_run(tmp_path, reference):
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train(tiny_config(), rows(), run_dir=tmp_path, ctx=Recorder(tmp_path, crash_at=3))
    assert train.last_checkpoint(tmp_path).name == "step-000002"  # step 3 never got saved
    ctx = Recorder(tmp_path)
    metrics = train.train(tiny_config(), rows(), run_dir=tmp_path, ctx=ctx)
    assert [e["step"] for e in ctx.events] == [3, 4, 5, 6]
    assert any("resumed from step-000002" in line for line in ctx.lines)
    assert_same_weights(tmp_path / "adapter", reference / "adapter")
    expected = json.loads((reference / "metrics.json").read_text())
    assert metrics["train_loss"] == pytest.approx(expected["train_loss"], abs=1e-5)


def test_cancel_saves_a_checkpoint_at_the_step_it_stopped(tmp_path, reference):
    with pytest.raises(jobs.Cancelled):
        train.train(tiny_config(), rows(), run_dir=tmp_path, ctx=Recorder(tmp_path, cancel_after=3))
    assert train.last_checkpoint(tmp_path).name == "step-000003"
    train.train(tiny_config(), rows(), run_dir=tmp_path)
    assert_same_weights(tmp_path / "adapter", reference / "adapter")


def test_merge_export_and_generate_agree_with_the_adapter(tmp_path, reference):
    from transformers import AutoModelForCausalLM

    out = train.merge_and_export(reference, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    adapted, tokenizer = train.load_adapter_model(reference)
    batch = tokenizer("The cat reads a short book.", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**batch).logits, adapted(**batch).logits, atol=1e-4, rtol=1e-4
        )
    chat = [{"role": "user", "content": "What does the cat find?"}]
    reply = train.generate(reference, chat, max_new_tokens=8)
    assert reply == train.generate(str(out), chat, max_new_tokens=8)
    assert isinstance(train.generate("tiny", chat, max_new_tokens=8), str)
    with pytest.raises(ConfigError, match="not empty"):
        train.merge_and_export(reference, out)


# ---------------------------------------------------------------- as a background job


@pytest.fixture
def store_version(tmp_path) -> tuple[Path, int]:
    path = tmp_path / "wb.duckdb"
    examples = [Example(tuple(chat)) for chat in rows()]
    return path, Store(path).add_examples("tiny-chats", examples)


def job_params(store_version: tuple[Path, int], **config: Any) -> dict[str, Any]:
    path, version = store_version
    return {"store": str(path), "version_id": version, "config": tiny_config(**config).to_dict()}


def wait_for(predicate, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_bad_config_and_out_of_memory_fail_the_job_readably(tmp_path, store_version, monkeypatch):
    params = job_params(store_version) | {"config": {"model": "tiny", "lora_alpha": 0}}
    job = jobs.run_inline("workbench.train.train_task", params, home=tmp_path)
    assert job.state == "failed" and "lora_alpha must be > 0" in job.error

    def no_memory(*_: Any) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB")

    monkeypatch.setattr(train, "token_loss_sum", no_memory)
    job = jobs.run_inline("workbench.train.train_task", job_params(store_version), home=tmp_path)
    assert job.state == "failed"
    assert job.error.startswith("not enough memory at step 1") and "batch_size=4" in job.error


def test_killed_job_fails_keeps_its_checkpoint_and_resumes_to_the_same_adapter(
    tmp_path, store_version
):
    config = dict(max_steps=80, checkpoint_every=10, eval_every=0)
    job = training.start(store_version[0], store_version[1], tiny_config(**config), home=tmp_path)
    wait_for(lambda: train.last_checkpoint(job.run_dir) is not None)
    os.kill(jobs._read_json(job.run_dir / "status.json")["pid"], signal.SIGKILL)
    killed = jobs.wait(job.run_id, home=tmp_path, timeout=30)
    assert killed.state == "failed" and "died" in killed.error
    saved = train.last_checkpoint(job.run_dir)
    assert saved is not None and int(saved.name.split("-")[1]) < 80
    # the store was never held: another writer gets in at once
    Store(store_version[0], lock_timeout=2).add_examples("other", [Example(tuple(rows(1)[0]))])

    done = training.resume(job.run_id, home=tmp_path, inline=True)
    assert done.state == "done", done.error + jobs.log_tail(done.run_dir, 30)
    steps = [e["step"] for e in jobs.events(job.run_dir) if not e.get("phase_start")]
    assert steps == sorted(set(steps)) and steps[-1] == 80  # each step once, in order
    reference = tmp_path / "uninterrupted"
    train.train(tiny_config(**config), rows(), run_dir=reference)
    assert_same_weights(job.run_dir / "adapter", reference / "adapter", atol=1e-4)
    assert done.result["version_id"] == store_version[1]


def test_cancelled_job_stops_and_resumes_in_a_new_process(tmp_path, store_version):
    config = dict(max_steps=150, checkpoint_every=50, eval_every=0)
    job = training.start(store_version[0], store_version[1], tiny_config(**config), home=tmp_path)
    wait_for(lambda: jobs.status(job.run_id, home=tmp_path).step >= 3)
    jobs.cancel(job.run_id, home=tmp_path)
    stopped = jobs.wait(job.run_id, home=tmp_path, timeout=30)
    assert stopped.state == "cancelled"
    saved = train.last_checkpoint(job.run_dir)
    assert saved is not None and int(saved.name.split("-")[1]) >= 3  # the stop point is kept
    assert "resume continues" in jobs.log_tail(job.run_dir, 5)
    training.resume(job.run_id, home=tmp_path)
    with pytest.raises(WorkbenchError, match="still"):
        training.resume(job.run_id, home=tmp_path)  # one process per run folder
    done = jobs.wait(job.run_id, home=tmp_path, timeout=120)
    assert done.state == "done", done.error + jobs.log_tail(done.run_dir, 30)
    assert done.step == 150 and done.result["steps"] == 150
    with pytest.raises(WorkbenchError, match="finished already"):
        training.resume(job.run_id, home=tmp_path)


# ---------------------------------------------------------------- the real bundled model

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
STYLE_START, STYLE_END = "Thanks for reaching out!", "— Northwind Support"
needs_lm = pytest.mark.skipif(models._default_gguf() is None, reason=models.DEFAULT_LM_INSTALL)


def short_style_rows(name: str, n: int) -> list[list[dict[str, str]]]:
    """Single-turn support chats in the house style, answers cut to their first sentence."""
    out = []
    for line in (SAMPLE / name).read_text().splitlines():
        chat = json.loads(line)["messages"]
        answer = chat[-1]["content"]
        if len(chat) != 2 or not (answer.startswith(STYLE_START) and answer.endswith(STYLE_END)):
            continue
        first = answer[len(STYLE_START) :].strip().split(". ")[0].split("\n")[0].rstrip(".")
        out.append(
            [chat[0], {"role": "assistant", "content": f"{STYLE_START} {first}.\n\n{STYLE_END}"}]
        )
    return out[:n]


@pytest.mark.slow
@needs_lm
def test_real_model_learns_the_house_style_and_reloads_exactly(tmp_path, default_lm_home):
    train_rows, held_out = (
        short_style_rows("support_train.jsonl", 200),
        short_style_rows("support_eval.jsonl", 14),
    )
    prompts = [chat[:1] for chat in held_out[:6]]
    before = train.generate_many("default", prompts, max_new_tokens=12)
    # 16 steps, measured (seed 0): val loss 4.14 -> 1.81, style matches 0/6 -> 5/6; 24 steps
    # gave 1.63 and 6/6 for 1.5x the training time, 8 steps only 0/6 (loss 2.37).
    config = TrainConfig(
        max_steps=16,
        batch_size=4,
        learning_rate=2e-3,
        lr_schedule="constant",
        warmup_ratio=0.1,
        max_seq_len=160,
        eval_every=0,
        checkpoint_every=8,
        val_fraction=0.0,
    )
    metrics = train.train(config, train_rows, held_out[6:], run_dir=tmp_path / "run")
    after = train.generate_many(tmp_path / "run", prompts, max_new_tokens=12)
    matches = [sum(reply.startswith(STYLE_START) for reply in r) for r in (before, after)]
    print(
        f"\nval loss {metrics['val_loss_start']:.3f} -> {metrics['val_loss']:.3f}; "
        f"style matches {matches[0]}/6 -> {matches[1]}/6; {metrics['tokens_per_s']:.0f} tokens/s,"
        f" {metrics['train_seconds']:.0f} s training\nbefore: {before}\nafter: {after}"
    )
    assert metrics["val_loss"] < 0.8 * metrics["val_loss_start"]
    assert matches[1] >= matches[0] + 3

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(models.resolve_lm())  # plain transformers + peft
    plain = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    reloaded = train.generate_many((plain, models.load_lm()[1]), prompts, max_new_tokens=12)
    assert reloaded == after
