"""Text generation: the one decoding loop every caller uses (evaluation, the training
playground, the local judge).

Prompts are rendered with the model's chat template, sorted by token length and left-padded per
batch, so a batch wastes little compute on padding and the last prompt token of every row sits in
the same column; greedy batched outputs then match one-at-a-time outputs of transformers'
``model.generate`` (tests/test_evaluate.py and benchmarks/bench_generate.py check this). Each row
stops at its own stop token and leaves the batch; sampling is seeded and reproducible; a ``check``
callback runs between decoding steps so a job can cancel mid-answer. The loop runs on the
model's device (CPU, CUDA or MPS) with its KV cache; on a CUDA GPU the batches are as large as
its free memory allows (batch_rows), on the CPU they keep the measured 16 rows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Messages = list[dict[str, str]]
# progress(done_rows, total_rows, generated_tokens)
GenProgress = Callable[[int, int, int], None]
# allowed(tokens generated so far) -> the only tokens that may come next; [] = no constraint.
Allowed = Callable[[Sequence[int]], Sequence[int]]
# One more batch costs a fixed ~50 ms per decoding step (reading the weights), as much as
# prefilling ~16 padded prompt tokens (~3 ms each), measured with SmolLM2-135M on this CPU.
STEP_COST_IN_PROMPT_TOKENS = 16
CPU_BATCH_SIZE = 16  # rows per batch on the CPU and MPS, where the figures above were measured
# On a CUDA GPU a decoding step reads the weights once whatever the rows in it, so batches are
# filled: as many rows as fit a share of the free memory with their KV cache, up to this many.
GPU_MAX_BATCH = 256


# ---------------------------------------------------------------- generation settings


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate: greedy by default; temperature/top_p/top_k only when do_sample=True;
    batch_size None picks the rows per batch for the model's device (batch_rows)."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_size: int | None = None  # None: 16 on the CPU; on a GPU what fits (batch_rows)

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, 1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        check_int("top_k", self.top_k, 0)
        check_int("seed", self.seed, 0)
        if not isinstance(self.do_sample, bool):
            raise ConfigError(f"do_sample must be true or false, got {self.do_sample!r}")
        if not _number(self.temperature) or self.temperature <= 0:
            raise ConfigError(f"temperature must be a number > 0, got {self.temperature!r}")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not self.do_sample:
            self._reject_sampling_options()

    def _reject_sampling_options(self) -> None:
        # A sampling option with greedy decoding is silently ignored by transformers: say so.
        changed = [f"{f}={getattr(self, f)!r}" for f, default in
                   (("temperature", 1.0), ("top_p", 1.0), ("top_k", 0))
                   if getattr(self, f) != default]
        if changed:
            raise ConfigError(f"{', '.join(changed)} only apply when sampling: set "
                              "do_sample=True, or leave them at their defaults for greedy")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> GenerationConfig:
        """Return a config from JSON-like values; unknown keys raise ConfigError naming them."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown generation option(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict."""
        return asdict(self)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value: Any, minimum: int) -> None:
    """Raise ConfigError unless value is an int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ---------------------------------------------------------------- generation


@dataclass(frozen=True)
class Generation:
    """One generated answer: text (special tokens removed), its token ids, and hit_max.

    ``hit_max`` is True when generation stopped at max_new_tokens instead of a stop token.
    """

    text: str
    token_ids: tuple[int, ...]
    hit_max: bool

    @property
    def n_tokens(self) -> int:
        """Return how many tokens were generated before the stop token."""
        return len(self.token_ids)


def prompt_messages(messages: Sequence[Mapping[str, str]]) -> Messages:
    """Return the turns to answer: without the final assistant turn when the conversation
    ends with one (the reference), else all turns (it is a prompt already)."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    # Only a final assistant turn is the reference: a prompt-only multi-turn conversation
    # keeps its earlier assistant turns.
    return turns[:-1] if turns and turns[-1]["role"] == "assistant" else turns


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Return the token ids that end an answer: eos, <|im_end|> and the model's own eos."""
    ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    configured = model.generation_config.eos_token_id
    ids += configured if isinstance(configured, list) else [configured]
    unk = tokenizer.unk_token_id
    return sorted({i for i in ids if isinstance(i, int) and i >= 0 and i != unk})


def encode_prompts(tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Messages],
                   *, max_tokens: int | None = None, prefill: str = "") -> list[list[int]]:
    """Return the chat-template token ids (with the generation prompt) of each conversation;
    ``prefill`` starts the assistant's answer (the model continues it)."""
    texts = [tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
             + prefill for c in conversations]
    # The template already wrote the special tokens: adding a BOS again would shift the model.
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    # Keep the end of an over-long prompt: the question and the generation prompt are there.
    return [x[-max_tokens:] if max_tokens and len(x) > max_tokens else x for x in ids]


def generate_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   conversations: Sequence[Sequence[Mapping[str, str]]],
                   config: GenerationConfig | None = None, progress: GenProgress | None = None,
                   *, check: Callable[[], None] | None = None, prefill: str = "",
                   allowed: Allowed | None = None) -> list[Generation]:
    """Return one Generation per conversation, in input order, generated in length-sorted batches.

    A conversation ending with an assistant turn loses that turn (prompt_messages). ``progress`` is
    called after each batch; ``check`` after each decoding step (raise there to cancel).
    ``prefill`` starts every answer (not part of the returned text); ``allowed(tokens so far)``
    names the only tokens that may come next ([]: any), e.g. choice_constraint's.
    Sampled outputs are reproducible for the same seed, inputs and batch_size.
    """
    import torch

    config = config or GenerationConfig()
    prompts = encode_prompts(tokenizer, [prompt_messages(c) for c in conversations],
                             max_tokens=_prompt_budget(model, tokenizer, config), prefill=prefill)
    results: list[Generation | None] = [None] * len(prompts)
    options = _generate_options(model, tokenizer, config, check, allowed)
    lengths = [len(p) for p in prompts]
    batches = length_batches(lengths, batch_rows(model, config, max(lengths, default=0)),
                             overhead=_batch_overhead(model, config, lengths))
    done = tokens = 0
    with torch.inference_mode(), _seeded(config, model.device):
        for idx in batches:
            batch = _generate(model, tokenizer, [prompts[i] for i in idx], options)
            for i, generation in zip(idx, batch):
                results[i] = generation
            done, tokens = done + len(idx), tokens + sum(g.n_tokens for g in batch)
            if progress:
                progress(done, len(prompts), tokens)
    return results  # type: ignore[return-value]


def generate_vllm(engine: Any, conversations: Sequence[Sequence[Mapping[str, str]]],
                  config: GenerationConfig | None = None, progress: GenProgress | None = None,
                  *, check: Callable[[], None] | None = None, chunk: int = 256
                  ) -> list[Generation]:
    """Return one Generation per conversation from a vLLM engine (vllm_backend.load): the same
    prompt token ids, max_new_tokens, stop tokens and answer decoding as generate_batch.

    vLLM schedules its own batches; the rows go to it ``chunk`` at a time so that ``progress``
    and ``check`` (cancel) run between chunks.
    """
    config = config or GenerationConfig()
    tokenizer = engine.tokenizer
    prompts = encode_prompts(tokenizer, [prompt_messages(c) for c in conversations],
                             max_tokens=_prompt_budget(engine, tokenizer, config))
    params = _vllm_sampling(config, engine.stops)
    stops, results, tokens = set(engine.stops), [], 0
    for start in range(0, len(prompts), chunk):
        if check:
            check()
        part = [{"prompt_token_ids": p} for p in prompts[start:start + chunk]]
        outputs = engine.llm.generate(part, params, use_tqdm=False, lora_request=engine.lora)
        for out in outputs:
            results.append(_decode(tokenizer, list(out.outputs[0].token_ids), stops,
                                   config.max_new_tokens))
        tokens += sum(g.n_tokens for g in results[start:])
        if progress:
            progress(len(results), len(prompts), tokens)
    return results


def _vllm_sampling(config: GenerationConfig, stops: list[int]) -> Any:
    """vLLM SamplingParams equal to ours: greedy (temperature 0) unless do_sample, the same
    max_new_tokens and stop tokens."""
    from vllm import SamplingParams

    sampling = ({"temperature": config.temperature, "top_p": config.top_p,
                 "top_k": config.top_k or -1, "seed": config.seed}
                if config.do_sample else {"temperature": 0.0})
    return SamplingParams(max_tokens=config.max_new_tokens, stop_token_ids=list(stops),
                          **sampling)


def batch_rows(model: PreTrainedModel, config: GenerationConfig, prompt_tokens: int) -> int:
    """Return the rows per generation batch: config.batch_size when set; else 16 off CUDA, and
    on a CUDA GPU as many rows as fit 30% of its free memory with a KV cache of
    prompt_tokens + max_new_tokens positions each (at most GPU_MAX_BATCH)."""
    from .device import rows_that_fit

    if config.batch_size is not None:
        return config.batch_size
    if model.device.type != "cuda":
        return CPU_BATCH_SIZE
    return rows_that_fit(str(model.device), _kv_bytes_per_token(model) *
                         (prompt_tokens + config.max_new_tokens), cpu_rows=CPU_BATCH_SIZE,
                         most=GPU_MAX_BATCH)


def _batch_overhead(model: PreTrainedModel, config: GenerationConfig, lengths: list[int]
                    ) -> float:
    # On the CPU one more batch costs its decoding steps (measured above). On a CUDA GPU a
    # step costs about the same for one row or many, so the fewest batches win: an extra
    # batch costs more than all the padding of any split could (max length x rows).
    if model.device.type != "cuda":
        return float(STEP_COST_IN_PROMPT_TOKENS * config.max_new_tokens)
    return float(max(lengths, default=0) * len(lengths) + 1)


def _kv_bytes_per_token(model: PreTrainedModel) -> float:
    # Keys and values of every layer, plus the full-vocabulary logits of the last position
    # spread over the tokens (they are per row, not per token; generous on purpose).
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    size = next(model.parameters()).element_size()
    return 2 * c.num_hidden_layers * heads * head_dim * size + 4 * c.vocab_size / 64


def generate_texts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   conversations: Sequence[Sequence[Mapping[str, str]]],
                   config: GenerationConfig | None = None) -> list[str]:
    """Return the answer text to each conversation (generate_batch without the token ids)."""
    return [g.text for g in generate_batch(model, tokenizer, conversations, config)]


def choice_constraint(sequences: Sequence[Sequence[int]]) -> Allowed:
    """Return an ``allowed`` for generate_batch: the answer must begin with one of the token
    sequences (each token must keep it a prefix of one); free once one is complete."""
    options = [tuple(s) for s in sequences]

    def allowed(made: Sequence[int]) -> list[int]:
        made = tuple(made)
        if made in options:
            return []
        n = len(made)
        return sorted({s[n] for s in options if len(s) > n and s[:n] == made})

    return allowed


def length_batches(lengths: Sequence[int], batch_size: int, *, overhead: float = 0.0
                   ) -> list[list[int]]:
    """Return batches of indices, longest prompts first, at most batch_size each, that minimise
    padded prompt tokens plus ``overhead`` (in prompt tokens) per batch."""
    # Longest first: the slowest batch runs while the user watches, so the ETA only improves.
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sizes = [lengths[i] for i in order]
    # Batches are runs of the sorted order; best[j] = cheapest split of the first j rows.
    best, cut = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(max(0, j - batch_size), j):
            cost = best[i] + sizes[i] * (j - i) + overhead  # sizes[i]: the batch's longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], len(order)
    while j:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1]


def _prompt_budget(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   config: GenerationConfig) -> int | None:
    limit = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return max(1, int(limit) - config.max_new_tokens) if limit and limit < 10**7 else None


@contextlib.contextmanager
def _seeded(config: GenerationConfig, device: Any = None) -> Iterator[None]:
    import torch

    if not config.do_sample:
        yield
        return
    # A private RNG stream: sampling is reproducible and the caller's global RNG is untouched
    # (on a CUDA device its generator is forked too: multinomial draws from it there).
    gpus = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        torch.manual_seed(config.seed)
        yield


def hf_generation_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                         config: GenerationConfig) -> Any:
    """Return the transformers GenerationConfig equal to ours (for calling model.generate)."""
    from transformers import GenerationConfig as HFConfig

    sampling = ({"temperature": config.temperature, "top_p": config.top_p,
                 "top_k": config.top_k or None} if config.do_sample else {})
    return HFConfig(max_new_tokens=config.max_new_tokens, do_sample=config.do_sample,
                    eos_token_id=stop_token_ids(model, tokenizer),
                    pad_token_id=tokenizer.pad_token_id, **sampling)


@dataclass(frozen=True)
class _Options:
    stops: Any  # a tensor of stop token ids
    max_new_tokens: int
    pick: Callable[[Any], Any]  # last-position logits -> next token per row
    check: Callable[[], None] | None
    logits_to_keep: bool
    allowed: Allowed | None = None


def _generate_options(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      config: GenerationConfig, check: Callable[[], None] | None,
                      allowed: Allowed | None = None) -> _Options:
    import inspect

    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _Options(torch.tensor(stop_token_ids(model, tokenizer), device=model.device),
                    config.max_new_tokens,
                    _picker(config), check,
                    "logits_to_keep" in inspect.signature(type(base).forward).parameters,
                    allowed)


def _picker(config: GenerationConfig) -> Callable[[Any], Any]:
    import torch

    if not config.do_sample:
        return lambda logits: logits.argmax(dim=-1)
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList([TemperatureLogitsWarper(config.temperature)])
    if config.top_k:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p < 1:
        warpers.append(TopPLogitsWarper(config.top_p))

    def sample(logits: torch.Tensor) -> torch.Tensor:
        # These warpers ignore input_ids; they only need the scores.
        scores = warpers(None, logits)
        return torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)

    return sample


def _generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
              prompts: list[list[int]], options: _Options) -> list[Generation]:
    """Return one Generation per prompt: prefill a left-padded batch, then decode step by step,
    dropping each row from the batch (and its cache) as soon as it emits a stop token."""
    import torch
    from transformers import DynamicCache

    # Left padding puts every prompt's last token in the last column; the mask hides the pads
    # and the position ids count real tokens only, so a row computes what it computes alone.
    batch = tokenizer.pad({"input_ids": prompts}, padding=True, padding_side="left",
                          return_tensors="pt").to(model.device)
    mask = batch["attention_mask"]
    rows = torch.arange(len(prompts), device=model.device)  # batch position -> prompt index
    outputs: list[list[int]] = [[] for _ in prompts]
    cache = DynamicCache(config=model.config)
    logits = _step(model, batch["input_ids"], mask, cache, options)
    for step in range(options.max_new_tokens):
        if options.check:
            options.check()
        if options.allowed:
            logits = _constrain(logits, [outputs[r] for r in rows.tolist()], options.allowed)
        tokens = options.pick(logits)
        for row, token in zip(rows.tolist(), tokens.tolist()):
            outputs[row].append(token)
        live = ~torch.isin(tokens, options.stops)
        if step + 1 == options.max_new_tokens or not live.any():
            break
        if not live.all():  # finished rows leave: no more compute spent on padding them
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, mask, tokens = rows[keep], mask[keep], tokens[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        logits = _step(model, tokens[:, None], mask, cache, options)
    return [_decode(tokenizer, ids, set(options.stops.tolist()), options.max_new_tokens)
            for ids in outputs]


def _constrain(logits: Any, made: list[list[int]], allowed: Allowed) -> Any:
    """Return the logits with every token a row may not take next set to -inf."""
    for row, tokens in enumerate(made):
        keep = list(allowed(tokens))
        if keep:
            kept = logits[row, keep].clone()
            logits[row, :] = float("-inf")
            logits[row, keep] = kept
    return logits


def _step(model: PreTrainedModel, input_ids: Any, mask: Any, cache: Any, options: _Options
          ) -> Any:
    # Position of each new token = real tokens before it, as transformers' generate computes.
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, -input_ids.shape[1]:]
    extra = {"logits_to_keep": 1} if options.logits_to_keep else {}
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                past_key_values=cache, use_cache=True, **extra)
    return out.logits[:, -1, :].float()


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int], stops: set[int],
            max_new_tokens: int) -> Generation:
    end = next((i for i, t in enumerate(ids) if t in stops), None)
    kept = ids if end is None else ids[:end]
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return Generation(text, tuple(kept), end is None and len(ids) >= max_new_tokens)

