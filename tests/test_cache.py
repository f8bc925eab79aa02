"""Embedding and score caches keyed by content id; embedding through the cache."""

import numpy as np
import pytest

from workbench.cache import get_embeddings, get_scores, params_hash, put_embeddings, put_scores
from workbench.curate import embed_frame
from workbench.embed import embed_texts
from workbench.schema import Example, examples_frame
from workbench.store import Store


class FakeEncoder:
    """A deterministic stand-in for SentenceTransformer that counts what it embeds."""

    def __init__(self):
        self.seen: list[str] = []

    def get_embedding_dimension(self):
        return 8

    def encode(self, texts, **kwargs):
        self.seen += texts
        out = np.array([[len(t), t.count("a"), t.count("e"), 1, 0, 0, 0, 1] for t in texts],
                       np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _frame(texts):
    examples = [Example(({"role": "user", "content": f"q{i}"},
                         {"role": "assistant", "content": t})) for i, t in enumerate(texts)]
    return examples_frame(examples)


def test_params_hash_ignores_key_order():
    assert params_hash({"a": 1, "b": [2]}) == params_hash({"b": [2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_embeddings_roundtrip_and_no_duplicates():
    store = Store(":memory:")
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert put_embeddings(store, ["a", "b", "a"], vectors, "m", "conversation") == 2
    assert put_embeddings(store, ["a", "c"], vectors[:2], "m", "conversation") == 1
    got = get_embeddings(store, ["a", "b", "c", "zzz"], "m", "conversation")
    assert sorted(got) == ["a", "b", "c"]
    np.testing.assert_array_equal(got["b"], vectors[1])
    assert get_embeddings(store, ["a"], "m", "user") == {}  # field is part of the key
    assert get_embeddings(store, ["a"], "other", "conversation") == {}


def test_scores_roundtrip_keyed_by_params():
    store = Store(":memory:")
    assert put_scores(store, ["a", "b"], [1.5, 2.5], "length", {"unit": "chars"}) == 2
    assert get_scores(store, ["a", "b", "c"], "length", {"unit": "chars"}) == {"a": 1.5, "b": 2.5}
    assert get_scores(store, ["a"], "length", {"unit": "tokens"}) == {}


def test_embed_texts_restores_input_order():
    enc = FakeEncoder()
    texts = ["a long text here", "x", "medium one"]
    out = embed_texts(texts, enc, batch_size=2)
    np.testing.assert_allclose(out, enc.encode(texts))
    assert enc.seen[0] == "x"  # shortest first, batched by length


def test_embed_frame_uses_cache_on_second_run():
    store = Store(":memory:")
    frame = _frame(["apple", "banana", "apple"])  # rows 0 and 2 are different convs
    enc = FakeEncoder()
    first = embed_frame(store, frame, encoder=enc, field="assistant")
    assert first.shape == (3, 8)
    n_seen = len(enc.seen)
    second = embed_frame(store, frame, encoder=enc, field="assistant")
    np.testing.assert_array_equal(first, second)
    assert len(enc.seen) == n_seen, "second run embeds nothing"


def test_embed_frame_embeds_identical_rows_once():
    store = Store(":memory:")
    same = Example(({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}))
    frame = examples_frame([same, same, same])
    enc = FakeEncoder()
    out = embed_frame(store, frame, encoder=enc)
    assert len(enc.seen) == 1 and out.shape == (3, 8)


class FakeOnnxEncoder(FakeEncoder):
    """The same stand-in, reporting the ONNX backend like models.OnnxEmbedder does."""

    backend = "onnx"


def test_int8_onnx_vectors_never_mix_with_torch_ones(monkeypatch):
    from workbench import models

    store = Store(":memory:")
    frame = _frame(["apple", "banana"])
    ids = frame["id"].tolist()
    embed_frame(store, frame, encoder=FakeEncoder(), field="assistant")
    monkeypatch.setattr(models, "ONNX_INT8", False)
    fp32 = FakeOnnxEncoder()
    embed_frame(store, frame, encoder=fp32, field="assistant")
    assert fp32.seen == [], "fp32 ONNX reads the torch vectors: they are the same numbers"
    monkeypatch.setattr(models, "ONNX_INT8", True)
    int8 = FakeOnnxEncoder()
    embed_frame(store, frame, encoder=int8, field="assistant")
    assert len(int8.seen) == 2, "int8 ONNX never reuses torch vectors"
    for backend in ("torch", "onnx"):
        assert len(get_embeddings(store, ids, "default", "assistant", backend=backend)) == 2


@pytest.mark.slow
def test_default_embedder_through_cache():
    store = Store(":memory:")
    frame = _frame(["How do I reset my password?", "How can I reset my password?",
                    "The weather is sunny today."])
    vectors = embed_frame(store, frame, field="assistant")
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.8 > sims[0, 2]
