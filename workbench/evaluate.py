"""Evaluation: batched generation on an eval set, per-row metrics, bootstrap aggregates.

An eval run is a background job (the "eval" task in tasks.py) that reads a dataset version
once, generates an answer for every row's prompt (its turns without the final assistant turn)
with the base model or a trained adapter (generation.py), scores each answer against the row's
reference (the last assistant turn) and writes two files into its run folder:

- ``predictions.parquet``: one row per eval row: row_key, id, prompt, reference, prediction,
  prompt_messages and metadata (JSON text), model, n_tokens, hit_max and the metric columns;
- ``summary.json``: the run's settings and every metric's mean with a bootstrap 95% interval.

Predictions made by any other system can be imported (``import_predictions``) and scored the
same way (the "import" task), so the analysis in ``analysis.py`` works on either. The "loop" task
closes the loop in one job: train on a (targeted) version, evaluate the adapter, and write
``before_after.json`` against an earlier eval run.

Generation itself (length-sorted, left-padded batches, stop tokens, seeded sampling) is
generation.py's; its names (GenerationConfig, generate_batch, ...) are re-exported here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import orjson
import pandas as pd

from .exceptions import ConfigError, ImportFormatError, WorkbenchError

# Generation lives in generation.py; its names stay importable from here for existing callers.
from .generation import (  # noqa: F401
    STEP_COST_IN_PROMPT_TOKENS,
    Generation,
    GenerationConfig,
    GenProgress,
    Messages,
    check_int,
    encode_prompts,
    generate_batch,
    generate_vllm,
    hf_generation_config,
    length_batches,
    prompt_messages,
    stop_token_ids,
)
from .io import ImportReport, Rejection
from .schema import response_text

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Check = Callable[[str], bool]
PREDICTIONS_FILE = "predictions.parquet"
PAIRWISE_FILE = "pairwise_judge.parquet"  # a judge comparison of two runs (tasks.py)
SUMMARY_FILE = "summary.json"
# Metric columns, and whether a higher value is better (None: closest to 1 is best).
METRICS: dict[str, bool | None] = {
    "exact_match": True, "token_f1": True, "rouge_l": True, "similarity": True,
    "length_ratio": None, "repetition": False, "distinct_2": True, "format_ok": True,
    "judge_score": True,
}
# Text cache field for embeddings of free text (predictions, references) keyed by text hash.
TEXT_FIELD = "text"


# ---------------------------------------------------------------- per-row metrics

_WORDS = re.compile(r"\w+")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Return SQuAD's normal form: NFKC, lowercase, no punctuation/symbols, no articles."""
    text = unicodedata.normalize("NFKC", text).lower()
    # SQuAD deletes string.punctuation; Unicode categories P* and S* extend that beyond ASCII.
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith(("P", "S")))
    return " ".join(_ARTICLES.sub(" ", text).split())


def words(text: str) -> list[str]:
    """Return the lowercase word tokens of a text (Unicode letters and digits)."""
    return _WORDS.findall(unicodedata.normalize("NFKC", text).lower())


def exact_match(prediction: str, reference: str) -> float:
    """Return 1.0 when the SQuAD-normalised texts are equal, else 0.0 (higher is better)."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Return SQuAD's token F1 of normalised texts in [0, 1] (1.0 when both are empty)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Return the length of the longest common subsequence of two token lists."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """Return ROUGE-L F1 (LCS of lowercase word tokens) in [0, 1]; 1.0 when both are empty."""
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def length_ratio(prediction: str, reference: str) -> float:
    """Return prediction words / reference words (1.0 is the reference's length)."""
    return len(words(prediction)) / max(1, len(words(reference)))


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n))))


def repetition(text: str, n: int = 3) -> float:
    """Return the share of word n-grams repeating an earlier one, in [0, 1) (lower is better)."""
    grams = _ngrams(words(text), n)
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def distinct_n(text: str, n: int = 2) -> float:
    """Return distinct word n-grams / all word n-grams in (0, 1]; 1.0 for texts too short."""
    grams = _ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else 1.0


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the cosine similarity of each row of a with the same row of b."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise ConfigError(f"vectors must have the same shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-12)


def text_id(text: str) -> str:
    """Return the cache id of a free text (a prediction or reference) for the embeddings cache."""
    return "t" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                                 digest_size=8).hexdigest()


def text_vectors(texts: Sequence[str], *, cache: Any = None, model: str = "default",
                 encoder: Any = None, device: str = "auto") -> np.ndarray:
    """Return unit vectors for texts, read from and written to a cache (cache.StoreCache) when
    given; the embedder (when needed and no encoder is given) runs on ``device``."""
    from .embed import embed_texts

    texts = list(texts)
    ids = [text_id(t) for t in texts]
    cached = cache.get_embeddings(ids, model, TEXT_FIELD) if cache is not None else {}
    missing = list(dict.fromkeys(i for i in ids if i not in cached))
    if missing:
        if encoder is None:
            from .models import load_embedder

            encoder = load_embedder(model, device=device)
        by_id = dict(zip(ids, texts))
        vectors = embed_texts([by_id[i] for i in missing], encoder)
        cached.update(zip(missing, vectors))
        if cache is not None:
            cache.put_embeddings(missing, vectors, model, TEXT_FIELD)
    dim = len(next(iter(cached.values()))) if cached else 0
    return np.stack([cached[i] for i in ids]) if ids else np.zeros((0, dim), np.float32)


def similarity(predictions: Sequence[str], references: Sequence[str], *,
               vectors: tuple[np.ndarray, np.ndarray] | None = None, cache: Any = None,
               model: str = "default", encoder: Any = None, device: str = "auto"
               ) -> np.ndarray:
    """Return the embedding cosine of each prediction with its reference; 0.0 for empty ones."""
    if vectors is None:
        both = text_vectors([*predictions, *references], cache=cache, model=model,
                            encoder=encoder, device=device)
        vectors = (both[:len(predictions)], both[len(predictions):])
    sims = cosine_rows(*vectors)
    # An empty answer embeds to some vector; it must not earn credit for being near anything.
    empty = np.array([not p.strip() for p in predictions], bool)
    return np.where(empty, 0.0, sims).astype(np.float64)


# ---------------------------------------------------------------- format checks


def style_checks(style: Mapping[str, Any]) -> dict[str, Check]:
    """Return named checks from a style spec: starts_with, ends_with, min/max_words, regex, forbid.

    ``regex`` must match somewhere (re.search) and ``forbid`` must not; both take a string
    or a list of strings. This is the shape of sample_data/defects.json's "style".
    """
    builders = {"starts_with": _starts_with, "ends_with": _ends_with, "min_words": _min_words,
                "max_words": _max_words, "regex": _regexes, "forbid": _forbids}
    if not isinstance(style, Mapping):
        raise ConfigError(f"style must be an object of checks such as {{\"max_words\": 80}}, "
                          f"got {type(style).__name__} {style!r}")
    unknown = sorted(set(style) - set(builders))
    if unknown:
        raise ConfigError(f"unknown style check(s) {', '.join(unknown)}; "
                          f"known: {', '.join(builders)}")
    checks: dict[str, Check] = {}
    for key, value in style.items():
        checks.update(builders[key](value))
    return checks


def _text_option(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"style.{name} must be a non-empty string, got {value!r}")
    return value


def _starts_with(value: Any) -> dict[str, Check]:
    prefix = _text_option("starts_with", value)
    return {"starts_with": lambda t: t.lstrip().startswith(prefix)}


def _ends_with(value: Any) -> dict[str, Check]:
    suffix = _text_option("ends_with", value)
    return {"ends_with": lambda t: t.rstrip().endswith(suffix)}


def _word_limit(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"style.{name} must be an integer >= 0, got {value!r}")
    return value


def _min_words(value: Any) -> dict[str, Check]:
    limit = _word_limit("min_words", value)
    return {"min_words": lambda t: len(t.split()) >= limit}


def _max_words(value: Any) -> dict[str, Check]:
    limit = _word_limit("max_words", value)
    return {"max_words": lambda t: len(t.split()) <= limit}


def _compiled(name: str, value: Any) -> list[re.Pattern]:
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, (list, tuple)) or not patterns:
        raise ConfigError(f"style.{name} must be a regex or a list of regexes, got {value!r}")
    try:
        return [re.compile(_text_option(name, p), re.MULTILINE) for p in patterns]
    except re.error as err:
        raise ConfigError(f"style.{name}: invalid regex ({err})") from None


def _regexes(value: Any) -> dict[str, Check]:
    rxs = _compiled("regex", value)
    return {f"regex_{i}": (lambda t, rx=rx: rx.search(t) is not None) for i, rx in enumerate(rxs)}


def _forbids(value: Any) -> dict[str, Check]:
    rxs = _compiled("forbid", value)
    return {f"forbid_{i}": (lambda t, rx=rx: rx.search(t) is None) for i, rx in enumerate(rxs)}


def as_checks(checks: Mapping[str, Check | str] | Sequence[str] | None = None, *,
              style: Mapping[str, Any] | None = None) -> dict[str, Check]:
    """Return named checks from callables, regex strings (must match), a regex list, and a style."""
    out = style_checks(style) if style else {}
    if checks is None:
        return out
    offset = len(out)  # list entries are named after any style regexes
    items = checks.items() if isinstance(checks, Mapping) else \
        [(f"regex_{offset + i}", c) for i, c in enumerate(checks)]
    for name, check in items:
        if isinstance(check, str):
            out.update({name: _compiled(name, check)[0].search})
        elif callable(check):
            out[name] = check
        else:
            raise ConfigError(f"format check {name!r} must be a callable or a regex string")
    return out


def format_checks(texts: Sequence[str], checks: Mapping[str, Check]) -> pd.DataFrame:
    """Return one boolean column fmt_<name> per check and format_ok (all passed) per text."""
    data = {f"fmt_{name}": [bool(check(t)) for t in texts] for name, check in checks.items()}
    frame = pd.DataFrame(data, index=range(len(texts)))
    frame["format_ok"] = frame.all(axis=1).astype(float) if checks else np.nan
    return frame


# ---------------------------------------------------------------- scoring a predictions frame


def score_predictions(frame: pd.DataFrame, *, checks: Mapping[str, Check] | None = None,
                      cache: Any = None, embedder: str | None = "default",
                      encoder: Any = None, vectors: tuple[np.ndarray, np.ndarray] | None = None,
                      judge: Callable[[pd.DataFrame], Sequence[float]] | None = None,
                      device: str = "auto") -> pd.DataFrame:
    """Return the frame with metric columns added for its prediction and reference columns.

    ``embedder=None`` (and no ``vectors``) skips the similarity column; the embedder runs on
    ``device``; ``judge`` receives the frame and returns one score in [0, 1] per row
    (judge_score).
    """
    _require_columns(frame, ("prediction", "reference"))
    out = frame.reset_index(drop=True).copy()
    pairs = list(zip(out["prediction"].astype(str), out["reference"].astype(str)))
    for name, fn in (("exact_match", exact_match), ("token_f1", token_f1), ("rouge_l", rouge_l),
                     ("length_ratio", length_ratio)):
        out[name] = [fn(p, r) for p, r in pairs]
    out["repetition"] = [repetition(p) for p, _ in pairs]
    out["distinct_2"] = [distinct_n(p) for p, _ in pairs]
    if vectors is not None or embedder is not None:
        preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
        out["similarity"] = similarity(preds, refs, vectors=vectors, cache=cache,
                                       model=embedder or "default", encoder=encoder,
                                       device=device)
    if checks:
        out = pd.concat([out, format_checks(out["prediction"].astype(str).tolist(), checks)],
                        axis=1)
    if judge is not None:
        out["judge_score"] = [float(s) for s in judge(out)]
    return out


def _require_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"the predictions need column(s) {', '.join(missing)}; "
                          f"found {', '.join(map(str, frame.columns))}")


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Return the metric columns present in a scored frame (METRICS and fmt_* columns)."""
    fmt = [c for c in frame.columns if c.startswith("fmt_")]
    return [c for c in METRICS if c in frame.columns] + fmt


# ---------------------------------------------------------------- aggregates


class CI(NamedTuple):
    """A mean with a bootstrap confidence interval over n non-missing values."""

    mean: float
    lo: float
    hi: float
    n: int


def bootstrap_ci(values: Sequence[float] | np.ndarray, n: int = 1000, seed: int = 0, *,
                 confidence: float = 0.95) -> CI:
    """Return the mean and its percentile bootstrap interval; NaN values are left out."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    check_int("n", n, 1)
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if not len(x):
        return CI(math.nan, math.nan, math.nan, 0)
    means = _bootstrap_means(x, n, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return CI(float(x.mean()), float(lo), float(hi), len(x))


def _bootstrap_means(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    # Resample in chunks so a large eval set never needs an n x len(x) index matrix at once.
    per_chunk = max(1, 4_000_000 // len(x))
    parts = [x[rng.integers(0, len(x), size=(min(per_chunk, n - s), len(x)))].mean(axis=1)
             for s in range(0, n, per_chunk)]
    return np.concatenate(parts)


def summarize(frame: pd.DataFrame, metrics: Sequence[str] | None = None, *, n: int = 1000,
              seed: int = 0) -> dict[str, dict[str, float]]:
    """Return {metric: {mean, lo, hi, n}} for each metric column, with bootstrap intervals."""
    names = metric_columns(frame) if metrics is None else list(metrics)
    out = {}
    for name in names:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)
        out[name] = bootstrap_ci(values, n, seed)._asdict()
    return out


# ---------------------------------------------------------------- predictions frames and runs


def predictions_frame(frame: pd.DataFrame, generations: Sequence[Generation], model: str
                      ) -> pd.DataFrame:
    """Return the predictions frame for a store frame and its generations (same order)."""
    if len(frame) != len(generations):
        raise WorkbenchError(f"{len(generations)} generations for {len(frame)} rows")
    return pd.DataFrame({
        "row_key": frame["row_key"].to_numpy(),
        "id": frame["id"].to_numpy(),
        "prompt": frame["prompt"].to_numpy(),
        "reference": [response_text(m) for m in frame["messages"]],
        "prediction": [g.text for g in generations],
        "prompt_messages": [_dumps(prompt_messages(m)) for m in frame["messages"]],
        "metadata": [_dumps(m) for m in frame["metadata"]],
        "model": model,
        "n_tokens": [g.n_tokens for g in generations],
        "hit_max": [g.hit_max for g in generations],
    })


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def write_run(run_dir: str | Path, predictions: pd.DataFrame, summary: dict) -> Path:
    """Write predictions.parquet and summary.json into a run folder; return the folder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    predictions.to_parquet(run_dir / PREDICTIONS_FILE, index=False)
    (run_dir / SUMMARY_FILE).write_bytes(
        orjson.dumps(summary, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return run_dir


def read_predictions(run_dir: str | Path) -> pd.DataFrame:
    """Return a run's predictions with prompt_messages and metadata parsed back from JSON."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        from .exceptions import NotFoundError

        raise NotFoundError(f"no predictions in {run_dir} (is the eval run finished?)")
    frame = pd.read_parquet(path)
    for column in ("prompt_messages", "metadata"):
        if column in frame.columns:
            frame[column] = [orjson.loads(v) if isinstance(v, str) and v else
                             ([] if column == "prompt_messages" else {}) for v in frame[column]]
    return frame


def read_summary(run_dir: str | Path) -> dict:
    """Return a run's summary.json ({} when it has none yet)."""
    path = Path(run_dir) / SUMMARY_FILE
    return orjson.loads(path.read_bytes()) if path.is_file() else {}


# ---------------------------------------------------------------- importing outside predictions

IMPORT_FIELDS = ("prompt", "reference", "prediction", "model")


def import_predictions(path: str | Path, *, model: str | None = None
                       ) -> tuple[pd.DataFrame, ImportReport]:
    """Return (predictions frame, report) from a JSONL or CSV file of prompt/reference/prediction.

    Each record needs string fields prompt, reference and prediction (may be empty) and a
    model name (``model=`` fills it where a record has none). Bad records are rejected with
    their line, field and fix; imported + rejected == rows read.
    """
    path = Path(path)
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such file")
    report = ImportReport(file=path.name, kind=_predictions_kind(path))
    records = _jsonl(path, report) if report.kind == "jsonl" else _csv(path, report)
    rows = []
    for line, record in records:
        report.rows_read += 1
        problem = _prediction_problem(record, model)
        if problem:
            report.rejected.append(Rejection(path.name, line, *problem,
                                             raw=_dumps(record)[:200]))
            continue
        rows.append(_prediction_row(record, model, line))
    report.imported = len(rows)
    if not rows:
        raise ImportFormatError(_nothing_imported(path, report))
    return pd.DataFrame(rows), report


def _predictions_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise ImportFormatError(f"{path.name}: unknown file type {suffix or '(none)'}; "
                            "use .jsonl (one JSON object a line) or .csv with a header row")


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ImportFormatError(f"{path.name}: not UTF-8 text (byte {err.start}); "
                                "save the file as UTF-8") from None


def _jsonl(path: Path, report: ImportReport) -> Iterator[tuple[int, Any]]:
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    if data.lstrip().startswith(b"["):  # a JSON array: positions count items, not lines
        yield from enumerate(_json_array(path, _read_text(path)), start=1)
        return
    # Line by line, like a dataset import: one line that is not UTF-8 is that line's problem.
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            report.blank_lines += 1
            continue
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            yield number, _BadUtf8(f"byte {line[err.start]:#x} at column {err.start + 1}")
            continue
        try:
            yield number, orjson.loads(line)
        except orjson.JSONDecodeError as err:
            yield number, _BadJson(str(err))


def _json_array(path: Path, text: str) -> list:
    try:
        items = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise ImportFormatError(f"{path.name}: not valid JSON ({err}); write a JSON array of "
                                "objects or one object per line (.jsonl)") from None
    return items if isinstance(items, list) else [items]


class _BadJson(str):
    """A line that is not JSON; carries the parser's message."""


class _BadUtf8(str):
    """A line (or CSV row) that is not UTF-8; says where the first bad byte is."""


class _BadCsv(str):
    """A CSV row the csv module cannot read; carries its message."""


# Bytes that were not UTF-8, as decoded with errors="surrogateescape".
_BAD_BYTES = re.compile("[\udc80-\udcff]")


def _csv(path: Path, report: ImportReport) -> Iterator[tuple[int, Any]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # Undecodable bytes become lone surrogates, so only the row holding them is rejected.
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        fieldnames = reader.fieldnames
    except csv.Error as err:
        raise ImportFormatError(f"{path.name}: unreadable CSV header ({err})") from None
    if fieldnames is None:
        raise ImportFormatError(f"{path.name}: empty file; expected a header row with "
                                f"{', '.join(IMPORT_FIELDS)}")
    if _BAD_BYTES.search("".join(fieldnames)):
        raise ImportFormatError(f"{path.name}: the header row is not UTF-8; save the file as "
                                "UTF-8")
    rows = iter(reader)
    while True:
        try:
            record = next(rows)
        except StopIteration:
            return
        except csv.Error as err:
            yield reader.line_num, _BadCsv(str(err))
            continue
        # Header is line 1; a quoted field may span lines, so ask the reader where it is.
        values = {k: v for k, v in record.items() if k is not None}
        if any(isinstance(v, str) and _BAD_BYTES.search(v) for v in values.values()):
            yield reader.line_num, _BadUtf8("in this row")
            continue
        yield reader.line_num, values


def _prediction_problem(record: Any, model: str | None) -> tuple[str, str, str] | None:
    if isinstance(record, _BadUtf8):
        return "(line)", f"not valid UTF-8 ({record})", "re-save the file as UTF-8"
    if isinstance(record, _BadCsv):
        return "(row)", f"bad CSV ({record})", "fix the quoting of this row"
    if isinstance(record, _BadJson):
        return "(line)", f"not valid JSON ({record})", "write one JSON object per line"
    if not isinstance(record, dict):
        return "(line)", f"expected a JSON object, got {type(record).__name__}", \
            'write {"prompt": ..., "reference": ..., "prediction": ..., "model": ...}'
    for name in ("prompt", "reference", "prediction"):
        value = record.get(name)
        if value is None:
            return name, "missing field", f"add a '{name}' string"
        if not isinstance(value, str):
            return name, f"wrong type: {type(value).__name__}", f"'{name}' must be a string"
    if not record["prompt"].strip():
        return "prompt", "empty content", "give every row the prompt the system answered"
    name = record.get("model") or model
    if not isinstance(name, str) or not name.strip():
        return "model", "missing field", "add a 'model' name to each row or pass model="
    return None


def _prediction_row(record: dict, model: str | None, line: int) -> dict[str, Any]:
    metadata = {k: v for k, v in record.items() if k not in IMPORT_FIELDS}
    messages = [{"role": "user", "content": record["prompt"]}]
    return {"row_key": line, "id": _pair_id(record["prompt"], record["reference"]),
            "prompt": record["prompt"], "reference": record["reference"],
            "prediction": record["prediction"].strip(), "prompt_messages": _dumps(messages),
            "metadata": _dumps(metadata), "model": record.get("model") or model,
            "n_tokens": -1, "hit_max": False}


def _pair_id(prompt: str, reference: str) -> str:
    # The same id an eval row of this prompt and reference has, so runs can be compared.
    from .schema import content_id

    return content_id([{"role": "user", "content": prompt},
                       {"role": "assistant", "content": reference}])


def _nothing_imported(path: Path, report: ImportReport) -> str:
    first = "; ".join(str(r) for r in report.rejected[:3])
    return (f"{path.name}: no predictions imported from {report.rows_read} rows"
            + (f" ({first})" if first else "")
            + f"; each row needs {', '.join(IMPORT_FIELDS)}")


# ---------------------------------------------------------------- jobs


def load_eval_model(spec: Any = "default", *, device: str | None = "auto",
                    precision: str | None = "auto"
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return (model, tokenizer) on the device in the precision the device policy picks
    ("auto": bf16 on a GPU that has it, fp32 on the CPU): "default", "tiny", a model folder or
    hub id, or {"run_dir": ...}."""
    from .device import resolve_device, resolve_precision, torch_dtype

    where = resolve_device(device)
    dtype = torch_dtype(resolve_precision(precision, where))
    if isinstance(spec, Mapping):
        if "run_dir" not in spec:
            raise ConfigError(f"model must be a name, a path or {{'run_dir': ...}}, got {spec!r}")
        try:
            from .train import load_adapter_model
        except ImportError:
            raise ConfigError("evaluating a trained run needs workbench.train."
                              "load_adapter_model, which this install lacks") from None
        model, tokenizer = load_adapter_model(spec["run_dir"])
        # The copy is private: merging the LoRA weights in saves two small matmuls per
        # adapted layer at every decoding step.
        return _placed(model.merge_and_unload(), where, dtype), tokenizer
    if spec == "tiny":  # the random 2-layer test model, named as training names it
        from .models import tiny_lm

        model, tokenizer = tiny_lm(seed=0)
        return _placed(model, where, dtype), tokenizer
    from .models import load_lm

    return load_lm(spec or "default", device=where, dtype=dtype)


def _placed(model: PreTrainedModel, device: str, dtype: Any) -> PreTrainedModel:
    # A 4-bit (QLoRA) base stays where bitsandbytes put it: it cannot change dtype or device.
    if getattr(model, "hf_quantizer", None) is None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def model_label(spec: Any) -> str:
    """Return a short display name for a model spec (a list: the models of imported rows)."""
    if isinstance(spec, Mapping):
        return f"run:{Path(str(spec.get('run_dir', '?'))).name}"
    if isinstance(spec, list):
        return ", ".join(map(str, spec))
    return str(spec or "default")
