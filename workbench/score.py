"""Scorers: per-row quality signals added as ``<name>_score`` columns, cached by content id.

A scorer is a pure function over the step DataFrame (data first, keyword-only options) that
returns one float per row, aligned with the input. Every scorer states its direction
("higher = ...") in its docstring and in the registry (``SCORERS``), which the page lists.
Heuristics look at one row at a time, so they can run batch by batch.

Model scorers run the bundled language model (or any local one) over prompt + response and
average the cross-entropy over the response tokens only (the response text plus the chat
template's end-of-turn marker, which the model must learn to emit):
- ``perplexity`` = exp(mean loss of the response given the prompt);
- ``ifd`` (Instruction-Following Difficulty, Cherry LLM / Superfiltering) = mean loss of the
  response given the prompt / mean loss of the same response tokens after only the template's
  assistant header. IFD near or above 1 means the instruction does not help predict the answer.
Sequences are sorted by length and packed into batches of about ``batch_tokens`` tokens, right
padded: under a causal mask real tokens never see the padding that follows them and position
ids start at 0 in every row, so batched values equal one-at-a-time values (to ~1e-6). The model
runs on the ``device`` option ("auto": CUDA, else MPS, else CPU) in fp32 everywhere, since the
cache key leaves the device out; on a CUDA GPU the batches hold as many tokens as its free memory
allows (device_batch_tokens), on the CPU ``batch_tokens`` as measured.

``score_frame`` runs several scorers and reads/writes a score cache handed in
(``cache.StoreCache``), keyed by (row id, scorer, parameters); ``score_into_cache`` is the
chunked version the background job ("model_score" in tasks.py) runs.
"""

from __future__ import annotations

import json
import math
import re
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from .exceptions import ConfigError

Better = Literal["higher", "lower"]
Kind = Literal["heuristic", "model", "judge", "learned"]
Progress = Callable[[int, int], None]
STYLES = ("plain", "markdown_list", "numbered_list", "code_block", "sentence", "single_line")
MODEL_SCORES = ("perplexity", "ifd")
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")
_SILENT_E = re.compile(r"[^aeiouy\W]e\b")
_NO_VOWEL_WORD = re.compile(r"\b[b-df-hj-np-tv-xz]+\b")
_FENCE = re.compile(r"^```[\w+-]*\s*\n(.*?)\n?```\s*$", re.S)
_MARKDOWN = re.compile(r"(^\s{0,3}(#{1,6}\s|[-*+]\s|\d+[.)]\s|>\s)|\*\*|__|```|\[[^\]]*\]\()",
                       re.M)


# --- heuristics -----------------------------------------------------------------------------

def _responses(frame: pd.DataFrame) -> list[str]:
    return [str(t) for t in frame["response"].tolist()]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def length_score(frame: pd.DataFrame, *, unit: Literal["words", "chars"] = "words"
                 ) -> np.ndarray:
    """Return the response length in words or characters (higher = longer response)."""
    if unit not in ("words", "chars"):
        raise ConfigError(f"unit={unit!r}: use 'words' or 'chars'")
    count = (lambda t: len(t.split())) if unit == "words" else len
    return np.array([count(t) for t in _responses(frame)], dtype=np.float64)


def lexical_diversity_score(frame: pd.DataFrame, *, window: int = 50) -> np.ndarray:
    """Return the moving-average type/token ratio of the response (higher = more varied words).

    MATTR averages the share of distinct words over every ``window``-word span, so unlike the
    plain ratio it does not fall just because a text is long; shorter texts use the plain ratio.
    """
    if window < 2:
        raise ConfigError(f"window={window}: must be at least 2 words")
    return np.array([_mattr(_words(t), window) for t in _responses(frame)], dtype=np.float64)


def _mattr(words: list[str], window: int) -> float:
    if not words:
        return 0.0
    if len(words) <= window:
        return len(set(words)) / len(words)
    counts = Counter(words[:window])
    total = len(counts)
    for old, new in zip(words, words[window:]):
        counts[old] -= 1
        if counts[old] == 0:
            del counts[old]
        counts[new] += 1
        total += len(counts)
    return total / ((len(words) - window + 1) * window)


def repetition_score(frame: pd.DataFrame, *, n: int = 3) -> np.ndarray:
    """Return the share of the response's word n-grams that repeat an earlier one
    (higher = more repetitive; 0 = no n-gram occurs twice)."""
    if n < 1:
        raise ConfigError(f"n={n}: must be a positive number of words")
    return np.array([_repeated_share(_ngrams(_words(t), n)) for t in _responses(frame)],
                    dtype=np.float64)


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(words[i:] for i in range(n))))


def _repeated_share(grams: list[tuple[str, ...]]) -> float:
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def readability_score(frame: pd.DataFrame) -> np.ndarray:
    """Return the Flesch reading ease of the response (higher = easier to read; 0 if no words).

    Syllables are counted as vowel groups (minus a silent final e), the usual approximation.
    """
    return np.array([_flesch(t) for t in _responses(frame)], dtype=np.float64)


def _flesch(text: str) -> float:
    lower = text.lower()
    words = len(_WORD.findall(lower))
    if words == 0:
        return 0.0
    sentences = max(1, len(_SENTENCE_END.findall(text)))
    syllables = len(_VOWEL_GROUP.findall(lower)) - len(_SILENT_E.findall(lower)) \
        + len(_NO_VOWEL_WORD.findall(lower))
    syllables = max(syllables, words)  # every word has at least one syllable
    return 206.835 - 1.015 * words / sentences - 84.6 * syllables / words


def overlap_score(frame: pd.DataFrame, *, n: int = 2) -> np.ndarray:
    """Return the share of the response's word n-grams that also occur in the prompt
    (higher = more of the response copied from the prompt)."""
    if n < 1:
        raise ConfigError(f"n={n}: must be a positive number of words")
    prompts = [str(p) for p in frame["prompt"].tolist()]
    return np.array([_shared(_ngrams(_words(r), n), set(_ngrams(_words(p), n)))
                     for p, r in zip(prompts, _responses(frame))], dtype=np.float64)


def _shared(grams: list[tuple[str, ...]], pool: set[tuple[str, ...]]) -> float:
    return sum(g in pool for g in grams) / len(grams) if grams else 0.0


def format_score(frame: pd.DataFrame, *, pattern: str | None = None, full_match: bool = False,
                 valid_json: bool = False, prefix: str | None = None,
                 style: str | None = None) -> np.ndarray:
    """Return the share of the given format checks the response passes (higher = better;
    1 = passes all). Checks: a regex ``pattern`` (searched, or ``full_match``), ``valid_json``
    (one JSON value, optionally in a ``` fence), a required ``prefix``, a ``style``."""
    checks = _format_checks(pattern, full_match, valid_json, prefix, style)
    return np.array([sum(c(t) for c in checks) / len(checks) for t in _responses(frame)],
                    dtype=np.float64)


def _format_checks(pattern: str | None, full_match: bool, valid_json: bool,
                   prefix: str | None, style: str | None) -> list[Callable[[str], bool]]:
    checks: list[Callable[[str], bool]] = []
    if pattern:
        try:
            rx = re.compile(pattern, re.S)
        except re.error as e:
            raise ConfigError(f"pattern={pattern!r}: not a valid regular expression ({e})") \
                from None
        checks.append((lambda t: rx.fullmatch(t.strip()) is not None) if full_match
                      else (lambda t: rx.search(t) is not None))
    if valid_json:
        checks.append(_is_json)
    if prefix:
        checks.append(lambda t: t.lstrip().startswith(prefix))
    if style:
        if style not in STYLES:
            raise ConfigError(f"style={style!r}: use one of {', '.join(STYLES)}")
        checks.append(_STYLE_CHECKS[style])
    if not checks:
        raise ConfigError("format: give at least one check (pattern, valid_json, prefix, style)")
    return checks


def _is_json(text: str) -> bool:
    fenced = _FENCE.match(text.strip())
    try:
        json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return False
    return True


_STYLE_CHECKS: dict[str, Callable[[str], bool]] = {
    "plain": lambda t: _MARKDOWN.search(t) is None,
    "markdown_list": lambda t: bool(re.search(r"^\s*[-*+]\s+\S", t, re.M)),
    "numbered_list": lambda t: bool(re.search(r"^\s*\d+[.)]\s+\S", t, re.M)),
    "code_block": lambda t: "```" in t,
    "sentence": lambda t: bool(re.match(r"\s*[A-Z0-9\"'(]", t)) and t.rstrip()[-1:] in ".!?\"')",
    "single_line": lambda t: "\n" not in t.strip(),
}


# --- model scorers ----------------------------------------------------------------------------

@dataclass
class Encoded:
    """Token ids of one row: the prompt context, and the response tokens that are scored."""

    context: list[int]
    response: list[int]


@dataclass
class EncodedRows:
    """Rows tokenized for model scoring; ``bare`` is the context of the response-alone pass."""

    rows: list[Encoded]
    bare: list[int]

    def tokens(self, alone: bool) -> list[int]:
        """Return each row's token count over the passes that will run."""
        extra = len(self.bare) if alone else 0
        return [len(r.context) + (2 if alone else 1) * len(r.response) + extra
                for r in self.rows]


def _template_parts(tokenizer: Any) -> tuple[str, str]:
    """Return (generation prompt, end-of-turn text) of the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return "", tokenizer.eos_token or ""
    user = [{"role": "user", "content": "x"}]
    render = tokenizer.apply_chat_template
    opened = render(user, tokenize=False, add_generation_prompt=True)
    closed = render(user, tokenize=False, add_generation_prompt=False)
    gen = opened[len(closed):] if opened.startswith(closed) else ""
    full = render(user + [{"role": "assistant", "content": "y"}], tokenize=False)
    rest = full[len(opened):] if full.startswith(opened) else ""
    # Only the text the model emits to close its turn; trailing newlines belong to the next turn.
    end = rest[1:].rstrip() if rest.startswith("y") else (tokenizer.eos_token or "")
    return gen, end


def _split_turns(messages: Sequence[dict]) -> tuple[list[dict], str]:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return list(messages[:i]), messages[i]["content"]
    return list(messages), ""


def _prompt_text(tokenizer: Any, turns: list[dict], gen: str) -> str | None:
    if not turns:
        return None  # nothing to condition on: the row is scored after the bare header
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in turns) + "\n\n" + gen


def encode_rows(frame: pd.DataFrame, tokenizer: Any, *, max_length: int = 1024) -> EncodedRows:
    """Return the rows tokenized for scoring: chat-template prompt, response + end of turn."""
    gen, end = _template_parts(tokenizer)
    bare = _ids(tokenizer, [gen])[0] if gen else []
    if not bare:  # no generation prompt: start the response-alone pass from a BOS/EOS token
        bare = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None
                else tokenizer.eos_token_id]
    if max_length <= len(bare):
        raise ConfigError(f"max_length={max_length}: must exceed the {len(bare)}-token header")
    split = [_split_turns(m) for m in frame["messages"].tolist()]
    prompts = [_prompt_text(tokenizer, turns, gen) for turns, _ in split]
    contexts = _ids(tokenizer, [p or "" for p in prompts])
    responses = _ids(tokenizer, [r + end for _, r in split])
    rows = [_truncate(c if p else bare, r, max_length, len(bare))
            for p, c, r in zip(prompts, contexts, responses)]
    return EncodedRows(rows, bare)


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def _truncate(context: list[int], response: list[int], max_length: int, bare: int) -> Encoded:
    # Keep the start of the response (it must also fit after the bare header) and the end of
    # the prompt, which holds the instruction closest to the answer.
    response = response[:max_length - bare]
    room = max_length - len(response)
    return Encoded(context[-room:] if len(context) > room else context, response)


_HEAD_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
HEAD_CHUNK = 128
# A scoring batch on a GPU holds at most this many padded tokens: a bigger one would only space
# out the progress reports and the checks for a cancel.
GPU_MAX_BATCH_TOKENS = 65536
SHARED_MIN = 8  # shorter common prefixes are recomputed: the bookkeeping would cost more


def _head_matches(model: Any) -> bool:
    """Return whether base model + output embeddings (with a KV prefix) reproduce the logits."""
    if model not in _HEAD_OK:
        _HEAD_OK[model] = _probe_head(model)
    return _HEAD_OK[model]


def _probe_head(model: Any) -> bool:
    # Some models scale or soft-cap logits after the head, or keep caches that do not simply
    # extend (sliding windows, recurrent state): those take the plain full forward pass.
    import torch

    head, base = model.get_output_embeddings(), getattr(model, "base_model", None)
    if head is None or base is None or base is model:
        return False
    ids = (torch.arange(1, 13, device=model.device).unsqueeze(0) * 7) % model.config.vocab_size
    with torch.inference_mode():
        full = model(input_ids=ids, use_cache=False).logits
        try:
            plain = head(base(input_ids=ids, use_cache=False).last_hidden_state)
            cache = base(input_ids=ids[:, :6], use_cache=True).past_key_values
            tail = head(_with_prefix(base, ids[:, 6:], torch.ones_like(ids), cache, 6))
        except (TypeError, AttributeError, ValueError, RuntimeError):
            return False
    return all(x.shape == y.shape and bool(torch.allclose(x, y, atol=1e-4, rtol=1e-4))
               for x, y in ((full, plain), (full[:, 6:], tail)))


def _with_prefix(base: Any, ids: Any, mask: Any, cache: Any, shared: int) -> Any:
    """Return the last hidden states of ids that follow a cached prefix of ``shared`` tokens."""
    import torch

    positions = torch.arange(shared, shared + ids.shape[1], device=ids.device).expand(
        ids.shape[0], -1)
    return base(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True).last_hidden_state


class _Prefixes:
    """Key/value caches of shared context prefixes, computed once per scoring call."""

    def __init__(self, model: Any):
        self.model, self._kv = model, {}

    def cache(self, prefix: list[int], rows: int) -> Any:
        """Return a fresh cache holding the prefix, repeated for a batch of ``rows``."""
        import copy

        import torch

        key = tuple(prefix)
        if key not in self._kv:
            ids = torch.tensor([prefix], device=self.model.device)
            self._kv[key] = self.model.base_model(input_ids=ids, use_cache=True).past_key_values
        fresh = copy.deepcopy(self._kv[key])  # the forward pass appends to the cache it gets
        fresh.batch_repeat_interleave(rows)
        return fresh


def _selected_states(model: Any, ids: Any, mask: Any, select: Any, prefix: list[int],
                     prefixes: _Prefixes) -> Any:
    """Return the final hidden states at the selected positions (logits for plain models)."""
    # The vocabulary projection is a fifth of the 135M model's work per token: run it only
    # where a response token is predicted. A context prefix shared by the whole batch (the
    # chat template's default system prompt, say) is computed once and reused as a KV cache.
    import torch

    if not _head_matches(model):
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[select]
    if prefix:
        full_mask = torch.cat([mask.new_ones((len(ids), len(prefix))), mask], 1)
        hidden = _with_prefix(model.base_model, ids, full_mask,
                              prefixes.cache(prefix, len(ids)), len(prefix))
    else:
        hidden = model.base_model(input_ids=ids, attention_mask=mask,
                                  use_cache=False).last_hidden_state
    return hidden[select]


def _token_nll(model: Any, states: Any, labels: Any, chunk: int = HEAD_CHUNK) -> Any:
    """Return each selected token's loss from its hidden state (or from its logits)."""
    import torch
    import torch.nn.functional as F

    if not _head_matches(model):
        return F.cross_entropy(states.float(), labels, reduction="none")
    head = model.get_output_embeddings()
    # Project a few hundred positions at a time: the full logits of a batch (positions x a
    # 49k vocabulary) would be hundreds of MB, and writing them costs more than computing them.
    return torch.cat([F.cross_entropy(head(states[i:i + chunk]).float(), labels[i:i + chunk],
                                      reduction="none")
                      for i in range(0, len(states), chunk)])


def _shared_prefix(contexts: list[list[int]]) -> int:
    """Return how many leading tokens all contexts share, leaving each at least one of its own."""
    limit = min(len(c) for c in contexts) - 1
    first = contexts[0]
    n = 0
    while n < limit and all(c[n] == first[n] for c in contexts):
        n += 1
    return n if n >= SHARED_MIN else 0


def _batch_nll(model: Any, seqs: list[tuple[list[int], list[int]]], pad_id: int,
               prefixes: _Prefixes) -> np.ndarray:
    """Return the mean loss over each sequence's response tokens, one padded forward pass."""
    import torch

    shared = _shared_prefix([c for c, _ in seqs]) if _head_matches(model) else 0
    tails = [(c[shared:], r) for c, r in seqs]
    width = max(len(c) + len(r) for c, r in tails)
    ids = torch.full((len(tails), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(tails), width), dtype=torch.long)
    labels = torch.zeros((len(tails), width), dtype=torch.long)
    select = torch.zeros((len(tails), width), dtype=torch.bool)
    for row, (context, response) in enumerate(tails):
        end = len(context) + len(response)
        ids[row, :end] = torch.tensor(context + response)
        mask[row, :end] = 1
        # The logits at position p predict token p + 1: response tokens are predicted from
        # the last context token up to the second-to-last token.
        select[row, len(context) - 1:end - 1] = True
        labels[row, len(context) - 1:end - 1] = torch.tensor(response)
    # Built on the CPU row by row, moved to the model's device in one copy each.
    picked = labels[select].to(model.device)
    ids, mask, select = (t.to(model.device) for t in (ids, mask, select))
    states = _selected_states(model, ids, mask, select, seqs[0][0][:shared],
                              prefixes)
    nll = _token_nll(model, states, picked)
    owner = select.nonzero()[:, 0]
    sums = torch.zeros(len(tails), dtype=torch.float64, device=nll.device).index_add_(
        0, owner, nll.double())
    return (sums / select.sum(1).double()).cpu().numpy()


def _batches(seqs: Sequence[tuple[list[int], list[int]]], batch_tokens: int
             ) -> list[np.ndarray]:
    """Return index batches, each padded size <= batch_tokens (>= 1 row).

    Sequences are grouped by their first context tokens (so a batch shares its template
    prefix) and sorted by length within a group (so padding stays small).
    """
    lengths = [len(c) + len(r) for c, r in seqs]
    group = {g: i for i, g in enumerate(sorted({tuple(c[:SHARED_MIN]) for c, _ in seqs}))}
    keys = [group[tuple(c[:SHARED_MIN])] for c, _ in seqs]
    order = np.lexsort((np.arange(len(seqs)), lengths, keys))
    batches, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and keys[order[stop]] == keys[order[start]] \
                and (stop - start + 1) * lengths[order[stop]] <= batch_tokens:
            stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


def device_batch_tokens(model: Any, batch_tokens: int) -> int:
    """Return the padded tokens per scoring batch: batch_tokens off CUDA (the CPU figures were
    measured with it); on a CUDA GPU as many as fit 30% of its free memory at the activations
    of one token (hidden states and the MLP's widest layer, kept x4 for attention and
    temporaries), at most GPU_MAX_BATCH_TOKENS."""
    from .device import rows_that_fit

    if model.device.type != "cuda":
        return batch_tokens
    c = model.config
    width = c.hidden_size + (getattr(c, "intermediate_size", None) or 4 * c.hidden_size)
    per_token = 4 * width * next(model.parameters()).element_size()
    return rows_that_fit(str(model.device), per_token, cpu_rows=batch_tokens,
                         most=max(batch_tokens, GPU_MAX_BATCH_TOKENS))


def sequence_losses(model: Any, tokenizer: Any, seqs: list[tuple[list[int], list[int]]], *,
                    batch_tokens: int = 1024, progress: Progress | None = None) -> np.ndarray:
    """Return the mean response-token loss of each (context, response) pair, batched by length."""
    import torch

    lengths = [len(c) + len(r) for c, r in seqs]
    out, done, total = np.zeros(len(seqs)), 0, sum(lengths)
    prefixes = _Prefixes(model)
    batch_tokens = device_batch_tokens(model, batch_tokens)
    with torch.inference_mode():
        for batch in _batches(seqs, batch_tokens):
            out[batch] = _batch_nll(model, [seqs[i] for i in batch], tokenizer.pad_token_id,
                                    prefixes)
            done += sum(lengths[i] for i in batch)
            if progress:
                progress(done, total)
    return out


def score_encoded(model: Any, tokenizer: Any, encoded: EncodedRows, *,
                  scores: Sequence[str] = MODEL_SCORES, batch_tokens: int = 1024,
                  progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Return {score name: values} for tokenized rows, both passes in one length-sorted pool."""
    alone = "ifd" in scores
    seqs = [(r.context, r.response) for r in encoded.rows]
    if alone:
        seqs += [(encoded.bare, r.response) for r in encoded.rows]
    losses = sequence_losses(model, tokenizer, seqs, batch_tokens=batch_tokens,
                             progress=progress)
    n = len(encoded.rows)
    out = {"perplexity": np.exp(losses[:n])} if "perplexity" in scores else {}
    if alone:
        out["ifd"] = losses[:n] / losses[n:]
    return out


def _check_model_options(scores: Sequence[str], max_length: int, batch_tokens: int) -> None:
    unknown = sorted(set(scores) - set(MODEL_SCORES))
    if unknown or not scores:
        raise ConfigError(f"scores={list(scores)}: choose from {', '.join(MODEL_SCORES)}")
    if max_length < 2 or batch_tokens < 1:
        raise ConfigError(f"max_length={max_length}, batch_tokens={batch_tokens}: must be "
                          "positive (max_length >= 2)")


def model_scores(frame: pd.DataFrame, *, scores: Sequence[str] = MODEL_SCORES,
                 model: str = "default", lm: tuple[Any, Any] | None = None,
                 max_length: int = 1024, batch_tokens: int = 1024,
                 progress: Progress | None = None, device: str = "auto") -> pd.DataFrame:
    """Return ``<score>_score`` columns (perplexity, ifd) aligned with the frame's rows.

    ``lm`` is a loaded (model, tokenizer); without it ``model`` is loaded with load_lm on
    ``device`` (scoring_lm). ``progress(done_tokens, total_tokens)`` is called after every
    batch (it may raise to stop).
    """
    _check_model_options(scores, max_length, batch_tokens)
    if lm is None:
        lm = scoring_lm(model, device)
    encoded = encode_rows(frame, lm[1], max_length=max_length)
    values = score_encoded(lm[0], lm[1], encoded, scores=scores, batch_tokens=batch_tokens,
                           progress=progress)
    return pd.DataFrame({f"{k}_score": v for k, v in values.items()}, index=frame.index)


def scoring_lm(model: str = "default", device: str = "auto") -> tuple[Any, Any]:
    """Return (model, tokenizer) for perplexity/IFD on a device, in fp32 on every device:
    cached scores are keyed without the device, so any device must give the same values
    (bf16 would change them)."""
    from .models import load_lm

    return load_lm(model, device=device, precision="fp32")


def perplexity_score(frame: pd.DataFrame, *, model: str = "default", max_length: int = 1024,
                     batch_tokens: int = 1024, lm: tuple[Any, Any] | None = None,
                     device: str = "auto") -> np.ndarray:
    """Return exp(mean response-token loss given the prompt) (higher = less predictable)."""
    return model_scores(frame, scores=("perplexity",), model=model, lm=lm,
                        max_length=max_length, batch_tokens=batch_tokens, device=device
                        )["perplexity_score"].to_numpy()


def ifd_score(frame: pd.DataFrame, *, model: str = "default", max_length: int = 1024,
              batch_tokens: int = 1024, lm: tuple[Any, Any] | None = None,
              device: str = "auto") -> np.ndarray:
    """Return loss(response | prompt) / loss(response alone) (higher = harder to follow;
    at or above 1 the prompt does not help, often a mismatched pair)."""
    return model_scores(frame, scores=("ifd",), model=model, lm=lm, max_length=max_length,
                        batch_tokens=batch_tokens, device=device)["ifd_score"].to_numpy()


# --- the registry -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Scorer:
    """A registered scorer: its function, default options, direction and kind.

    ``runtime`` names options that change speed, not values, so they stay out of the cache
    key; bump ``version`` when a scorer's values change, so old cached values are not reused.
    """

    name: str
    fn: Callable[..., np.ndarray]
    better: Better
    meaning: str
    kind: Kind = "heuristic"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    runtime: frozenset[str] = frozenset()
    version: int = 1

    @property
    def column(self) -> str:
        """Return the column this scorer writes."""
        return f"{self.name}_score"

    def cache_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Return the options that decide the values (the cache key), defaults filled in."""
        full = {**self.defaults, **params}
        return {**{k: v for k, v in full.items() if k not in self.runtime}, "_v": self.version}


def _judge_fn(frame: pd.DataFrame, **params: Any) -> np.ndarray:
    from .judge import JudgeConfig, judge_frame

    return judge_frame(frame, JudgeConfig(**params))["judge_score"].to_numpy()


def _learned_fn(frame: pd.DataFrame, **params: Any) -> np.ndarray:
    raise ConfigError("the learned score trains on labels in the store: use "
                      "workbench.labelling.train_learned or `workbench score REF --scorers "
                      "learned`")


_MODEL_DEFAULTS = {"model": "default", "max_length": 1024, "batch_tokens": 1024,
                   "device": "auto"}
_MODEL_RUNTIME = frozenset({"batch_tokens", "device"})  # speed, not values: not in the key
_SCORERS = (
    Scorer("length", length_score, "higher", "higher = longer response",
           defaults={"unit": "words"}),
    Scorer("lexical_diversity", lexical_diversity_score, "higher",
           "higher = more varied vocabulary", defaults={"window": 50}),
    Scorer("repetition", repetition_score, "lower", "higher = more repetitive",
           defaults={"n": 3}),
    Scorer("readability", readability_score, "higher", "higher = easier to read"),
    Scorer("overlap", overlap_score, "lower", "higher = more copied from the prompt",
           defaults={"n": 2}),
    Scorer("format", format_score, "higher", "higher = passes more format checks"),
    Scorer("perplexity", perplexity_score, "lower", "higher = less predictable response",
           kind="model", defaults=_MODEL_DEFAULTS, runtime=_MODEL_RUNTIME),
    Scorer("ifd", ifd_score, "higher",
           "higher = harder to follow (>= 1: the prompt does not help)", kind="model",
           defaults=_MODEL_DEFAULTS, runtime=_MODEL_RUNTIME),
    Scorer("judge", _judge_fn, "higher", "higher = better (1-10, LLM judge)", kind="judge",
           runtime=frozenset({"api_key_env", "max_concurrency", "requests_per_minute",
                              "timeout_s", "max_retries", "backoff_s"})),
    Scorer("learned", _learned_fn, "lower",
           "higher = more likely bad (P(bad), learned from your labels)", kind="learned"),
)
SCORERS: dict[str, Scorer] = {s.name: s for s in _SCORERS}


def scorer_table() -> pd.DataFrame:
    """Return one row per registered scorer: name, column, kind, better, meaning, defaults."""
    return pd.DataFrame([{"name": s.name, "column": s.column, "kind": s.kind,
                          "better": s.better, "meaning": s.meaning, "defaults": dict(s.defaults)}
                         for s in _SCORERS])


def direction_of(column: str) -> Better | None:
    """Return "higher"/"lower" for a registered scorer's name or column, else None."""
    name = column[:-len("_score")] if column.endswith("_score") else column
    if name.startswith("learned_") or name.startswith("learned:"):  # a named label set
        name = "learned"
    scorer = SCORERS.get(name)
    return scorer.better if scorer else None


# --- running scorers with the cache -------------------------------------------------------------

@dataclass(frozen=True)
class ScoreSpec:
    """One scorer to run: registered ``name``, its options, and an optional column name."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    column: str | None = None

    def __post_init__(self) -> None:
        if self.name not in SCORERS:
            raise ConfigError(f"unknown scorer {self.name!r}; choose from {', '.join(SCORERS)}")
        if self.column is not None and not self.column.endswith("_score"):
            raise ConfigError(f"column={self.column!r}: score columns end with '_score'")

    @property
    def scorer(self) -> Scorer:
        """Return the registered scorer."""
        return SCORERS[self.name]

    @property
    def out(self) -> str:
        """Return the column this spec writes."""
        return self.column or self.scorer.column


def _spec(item: str | ScoreSpec | tuple[str, Mapping[str, Any]]) -> ScoreSpec:
    if isinstance(item, ScoreSpec):
        return item
    if isinstance(item, str):
        return ScoreSpec(item)
    return ScoreSpec(item[0], dict(item[1]))


def score_frame(frame: pd.DataFrame, scorers: Sequence[str | ScoreSpec | tuple[str, Mapping]],
                *, cache: Any = None, lm: tuple[Any, Any] | None = None,
                progress: Progress | None = None) -> pd.DataFrame:
    """Return a copy of the frame with one ``<name>_score`` column per scorer.

    With a cache (``cache.StoreCache(store)``), cached values are read first and only rows
    without one are computed (then cached; NaN, e.g. a failed judge call, is never cached).
    ``lm`` overrides model loading for model scorers (their ``model`` option still names the
    cache entry). The judge also adds ``judge_reason`` and ``judge_error`` (empty for rows read
    from the cache).
    """
    specs = [_spec(s) for s in scorers]
    out = frame.copy()
    models = [s for s in specs if s.scorer.kind == "model"]
    for group in _model_groups(models):
        out = out.assign(**_run_model_group(frame, group, cache, lm, progress))
    for spec in specs:
        if spec.scorer.kind == "heuristic":
            out[spec.out] = _with_cache(frame, spec, cache, _heuristic(spec))
        elif spec.scorer.kind == "judge":
            out = _run_judge(out, frame, spec, cache, lm)
        elif spec.scorer.kind == "learned":
            _learned_fn(frame)
    return out


def _heuristic(spec: ScoreSpec) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda sub: spec.scorer.fn(sub, **{**spec.scorer.defaults, **spec.params})


def _cached(frame: pd.DataFrame, spec: ScoreSpec, cache: Any) -> dict[str, float]:
    if cache is None:
        return {}
    return cache.get_scores(frame["id"].tolist(), spec.name,
                            spec.scorer.cache_params(spec.params))


def _missing(frame: pd.DataFrame, cached: Mapping[str, float]) -> pd.DataFrame:
    """Return the first row of every id that has no cached value."""
    return frame[~frame["id"].isin(cached.keys())].drop_duplicates("id")


def _save(cache: Any, spec: ScoreSpec, ids: Sequence[str], values: np.ndarray,
          details: Sequence[str] | None = None) -> None:
    if cache is None:
        return
    ok = np.isfinite(values)  # a failure is reported, never cached as if it were a score
    kept = None if details is None else [d for d, good in zip(details, ok) if good]
    cache.put_scores([i for i, good in zip(ids, ok) if good], values[ok].tolist(), spec.name,
               spec.scorer.cache_params(spec.params), kept)


def _aligned(frame: pd.DataFrame, cached: Mapping[str, float], ids: Sequence[str],
             values: np.ndarray) -> np.ndarray:
    found = {**cached, **dict(zip(ids, values.tolist()))}
    return np.array([found[i] for i in frame["id"].tolist()], dtype=np.float64)


def _with_cache(frame: pd.DataFrame, spec: ScoreSpec, cache: Any,
                compute: Callable[[pd.DataFrame], np.ndarray]) -> np.ndarray:
    cached = _cached(frame, spec, cache)
    todo = _missing(frame, cached)
    values = np.asarray(compute(todo), dtype=np.float64) if len(todo) else np.zeros(0)
    _save(cache, spec, todo["id"].tolist(), values)
    return _aligned(frame, cached, todo["id"].tolist(), values)


def _model_groups(specs: list[ScoreSpec]) -> list[list[ScoreSpec]]:
    """Group perplexity and ifd specs that share options, so they share one model pass."""
    groups: dict[str, list[ScoreSpec]] = {}
    for spec in specs:
        key = json.dumps({**_MODEL_DEFAULTS, **spec.params}, sort_keys=True, default=str)
        groups.setdefault(key, []).append(spec)
    return list(groups.values())


def _run_model_group(frame: pd.DataFrame, group: list[ScoreSpec], cache: Any,
                     lm: tuple[Any, Any] | None, progress: Progress | None
                     ) -> dict[str, np.ndarray]:
    cached = {s.out: _cached(frame, s, cache) for s in group}
    todo = frame[~frame["id"].isin(set.intersection(*(set(c) for c in cached.values())))]
    todo = todo.drop_duplicates("id")
    opts = {**_MODEL_DEFAULTS, **group[0].params}
    values = model_scores(todo, scores=[s.name for s in group], model=opts["model"], lm=lm,
                          max_length=opts["max_length"], batch_tokens=opts["batch_tokens"],
                          progress=progress, device=opts["device"]) if len(todo) else None
    out = {}
    for spec in group:
        new = values[spec.scorer.column].to_numpy() if values is not None else np.zeros(0)
        _save(cache, spec, todo["id"].tolist(), new)
        out[spec.out] = _aligned(frame, cached[spec.out], todo["id"].tolist(), new)
    return out


def _run_judge(out: pd.DataFrame, frame: pd.DataFrame, spec: ScoreSpec, cache: Any,
               lm: tuple[Any, Any] | None) -> pd.DataFrame:
    from .judge import JudgeConfig, judge_frame

    cached = _cached(frame, spec, cache)
    todo = _missing(frame, cached)
    judged = judge_frame(todo, JudgeConfig(**spec.params), lm=lm)
    values = judged["judge_score"].to_numpy(dtype=np.float64)
    _save(cache, spec, todo["id"].tolist(), values, judged["judge_reason"].tolist())
    out[spec.out] = _aligned(frame, cached, todo["id"].tolist(), values)
    for extra in ("judge_reason", "judge_error"):
        by_id = dict(zip(todo["id"], judged[extra]))
        out[extra] = [by_id.get(i, "") for i in frame["id"].tolist()]
    return out


# --- combining ------------------------------------------------------------------------------

def normalize(values: Sequence[float], *, better: Better = "higher",
              method: Literal["rank", "minmax"] = "rank") -> np.ndarray:
    """Return values mapped to [0, 1] with 1 = best (NaN stays NaN; all equal -> 0.5).

    "rank" uses average ranks, so outliers and different scales do not matter; "minmax" keeps
    the spacing of the raw values.
    """
    x = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x)
    out = np.full(x.shape, np.nan)
    if method == "rank":
        ranks = pd.Series(x[ok]).rank(method="average").to_numpy()
        lo, hi = (1.0, float(ok.sum()))
    elif method == "minmax":
        ranks = x[ok]
        lo, hi = (float(ranks.min()), float(ranks.max())) if ok.any() else (0.0, 0.0)
    else:
        raise ConfigError(f"method={method!r}: use 'rank' or 'minmax'")
    out[ok] = (ranks - lo) / (hi - lo) if hi > lo else 0.5
    return out if better == "higher" else np.where(ok, 1.0 - out, np.nan)


def combined_score(frame: pd.DataFrame, weights: Mapping[str, float], *,
                   better: Mapping[str, Better] | None = None,
                   method: Literal["rank", "minmax"] = "rank") -> np.ndarray:
    """Return the weighted mean of normalized score columns, each in [0, 1] with 1 = best
    (higher = better). NaN where any weighted score is missing, so a failed row stays visible.

    ``weights`` maps score columns (or scorer names) to non-negative weights; the direction of
    a registered scorer comes from the registry unless ``better`` names it.
    """
    columns = _weight_columns(frame, weights)
    total, acc = sum(columns.values()), np.zeros(len(frame))
    for column, weight in columns.items():
        way = (better or {}).get(column) or (better or {}).get(column[:-6]) \
            or direction_of(column) or "higher"
        acc = acc + weight * normalize(frame[column].to_numpy(dtype=np.float64), better=way,
                                       method=method)
    return acc / total


def _weight_columns(frame: pd.DataFrame, weights: Mapping[str, float]) -> dict[str, float]:
    columns: dict[str, float] = {}
    for key, weight in weights.items():
        column = key if key in frame.columns else f"{key}_score"
        if column not in frame.columns:
            raise ConfigError(f"weights: no column {key!r} (or {key}_score); run that scorer "
                              "first")
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"weights[{key!r}]={weight!r}: must be a number >= 0 (the "
                              "direction comes from the scorer)")
        columns[column] = float(weight)
    if not columns or sum(columns.values()) <= 0:
        raise ConfigError("weights: give at least one score a positive weight")
    return columns


# --- scoring a version into the cache, chunk by chunk -------------------------------------------

def cached_values(frame: pd.DataFrame, spec: ScoreSpec, cache: Any) -> dict[str, float]:
    """Return the cached values of a scorer for the frame's rows, by id ({} without a cache)."""
    return _cached(frame, spec, cache)


def score_into_cache(todo: pd.DataFrame, specs: list[ScoreSpec], cache: Any,
                     progress: Callable[..., None], chunk_rows: int = 64) -> dict:
    """Score rows with perplexity/ifd in length-sorted chunks, caching each chunk as it is done;
    return counts. ``progress(done, total, **metrics)`` counts tokens, so the ETA holds."""
    opts = {**_MODEL_DEFAULTS, **specs[0].params}
    model, tokenizer = scoring_lm(opts["model"], opts["device"])
    encoded = encode_rows(todo, tokenizer, max_length=opts["max_length"])
    names = [s.name for s in specs]
    lengths = encoded.tokens("ifd" in names)
    order = np.argsort(lengths, kind="stable")  # similar lengths share a chunk: little padding
    total, done, started = int(sum(lengths)), 0, time.perf_counter()
    ids = todo["id"].to_numpy()
    for start in range(0, len(order), chunk_rows):
        part = order[start:start + chunk_rows]
        sub = EncodedRows([encoded.rows[i] for i in part], encoded.bare)
        values = score_encoded(model, tokenizer, sub, scores=names,
                               batch_tokens=opts["batch_tokens"],
                               progress=lambda d, _t, base=done: progress(base + d, total))
        for spec in specs:  # one short write per chunk: the app can read meanwhile
            _save(cache, spec, ids[part].tolist(), values[spec.name])
        done += sum(lengths[i] for i in part)
        rate = (start + len(part)) / (time.perf_counter() - started)
        progress(done, total, rows=start + len(part), rows_total=len(order),
                 examples_per_s=round(rate, 3))
    return {"scored": len(order), "tokens": total,
            "seconds": round(time.perf_counter() - started, 2)}
