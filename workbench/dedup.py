"""Exact, near (MinHash LSH) and semantic duplicates, found as clusters a person can review.

Finders (`exact_duplicates`, `near_duplicates`, `semantic_duplicates`, `find_duplicates`)
return a clusters DataFrame with one row per member (columns CLUSTER_COLUMNS); each cluster
names the member its keep policy keeps and why. `apply_clusters` turns clusters plus a person's
overrides into a StepResult. The row-wise parts (`exact_keys`, `minhash_signatures`, embeddings)
depend on nothing but the row, so they can run batch by batch; grouping is the global step.

Building blocks for a distributed engine (ray_dedup.py uses them; each is documented below):
validation (`check_field`, `check_keep`), row-wise keys and signatures
(`row_keys_and_signatures`, `has_shingles`, `band_keys`, `row_hashes`), grouping within one
partition (`dense_groups`, `exact_edges`, `identical_rows`, `bucket_pairs`), verification
(`jaccard_estimate`, `near_enough`), and assembly once components are known
(`connected_components`, `clusters_from_labels`, `empty_clusters`).

MinHash signatures come from `rensa` (Rust). Shingles are hashed here with numpy in one pass
over the whole batch and handed to rensa as one flat buffer, so no Python object is made per
shingle; LSH banding, verification and union-find are numpy. On this machine rensa computes
signatures ~8x faster than the same minhash written in numpy (0.6 s vs 5 s for 4M shingles x
128 permutations); the whole near-duplicate search runs 14-17x faster than datasketch's
MinHash.bulk + MinHashLSH at higher recall (benchmarks/bench_dedup.py).
"""

from __future__ import annotations

import hashlib
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import rensa

from workbench.exceptions import ConfigError
from workbench.schema import DROP_COLUMNS, StepResult, response_text

Field = Literal["conversation", "user", "assistant"]
KeepPolicy = Literal["first", "longest", "highest_score"]
Shingle = Literal["char", "word"]
FIELDS: tuple[str, ...] = get_args(Field)
KEEP_POLICIES: tuple[str, ...] = get_args(KeepPolicy)
KEEP_ALL = "all"  # override value: keep every member of a cluster

CLUSTER_COLUMNS = ("cluster_id", "row_key", "kept", "method", "similarity", "exact_group",
                   "size", "keep_reason")
REASONS = {"exact": "exact_duplicate", "near": "near_duplicate",
           "semantic": "semantic_duplicate"}
# With all-MiniLM-L6-v2: the lowest threshold whose precision on half of MRPC train reaches 0.9
# (held-out half: P 0.91, R 0.29, F1 0.44). Dropping a distinct row costs more than keeping a
# paraphrase, and MRPC's F1 optimum (~0.6, F1 0.82) barely beats calling every pair a
# duplicate (F1 0.81);
# on Alpaca, 0.85 already merges same-topic but different tasks. See benchmarks/bench_dedup.py.
DEFAULT_COSINE_THRESHOLD = 0.92
EMPTY_SIGNATURE = np.uint32(0xFFFFFFFF)  # rensa's value for a document without shingles

_FIELD_ROLES: dict[str, frozenset[str] | None] = {
    "conversation": None, "user": frozenset({"user"}), "assistant": frozenset({"assistant"})}
_U64 = np.uint64
_HASH_BASE = _U64(0x100000001B3)  # odd, so invertible mod 2**64 (see _substring_hashes)
_HASH_BASE_INV = _U64(pow(0x100000001B3, -1, 2**64))
_MAX_BUCKET_PAIRS = 64  # members of one LSH bucket paired with at most this many neighbours


# --- options --------------------------------------------------------------------------------

@dataclass(frozen=True)
class MinHashConfig:
    """Options of near-duplicate detection with MinHash LSH.

    ``threshold``: estimated Jaccard similarity of shingle sets at or above which two rows are
    near duplicates. ``shingle``/``ngram``: character or word n-grams of the normalized text.
    ``bands``/``rows``: LSH banding; when left None they are derived from the threshold,
    weighting missed pairs by ``recall_weight`` against extra candidates (which verification
    removes, so they only cost time).
    """

    threshold: float = 0.8
    ngram: int = 5
    shingle: Shingle = "char"
    num_perm: int = 128
    bands: int | None = None
    rows: int | None = None
    seed: int = 42
    strip_punctuation: bool = False
    batch_size: int = 10_000
    recall_weight: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold={self.threshold}: must be in (0, 1]")
        if self.shingle not in get_args(Shingle):
            raise ConfigError(f"shingle={self.shingle!r}: must be 'char' or 'word'")
        for name in ("ngram", "num_perm", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be a positive integer")
        if not 0.0 <= self.recall_weight <= 1.0:
            raise ConfigError(f"recall_weight={self.recall_weight}: must be in [0, 1]")
        if (self.bands is None) != (self.rows is None):
            raise ConfigError("bands and rows: give both or neither (neither derives them "
                              "from threshold)")
        if self.bands is not None and (self.bands < 1 or self.rows < 1
                                       or self.bands * self.rows > self.num_perm):
            raise ConfigError(f"bands={self.bands}, rows={self.rows}: need bands*rows <= "
                              f"num_perm={self.num_perm}, both >= 1")

    def lsh_params(self) -> tuple[int, int]:
        """Return (bands, rows): the given ones, or those best for threshold and num_perm."""
        if self.bands is not None:
            return self.bands, self.rows
        return optimal_lsh_params(self.threshold, self.num_perm, fn_weight=self.recall_weight)

    def to_dict(self) -> dict[str, Any]:
        """Return the options as a JSON-ready dict (bands/rows resolved)."""
        bands, rows = self.lsh_params()
        return {**asdict(self), "bands": bands, "rows": rows}


@lru_cache(maxsize=256)
def optimal_lsh_params(threshold: float, num_perm: int, *,
                       fn_weight: float = 0.5) -> tuple[int, int]:
    """Return the (bands, rows) minimizing weighted false-positive and false-negative areas.

    Same criterion as datasketch's MinHashLSH (which weighs both 0.5): the area under the
    S-curve below the threshold (candidates that are not similar) and above it (similar pairs
    missed). On planted Alpaca near-duplicates, fn_weight 0.9 instead of 0.5 raised recall of
    pairs above the threshold from 0.90 to 0.98 at the same speed (benchmarks/bench_dedup.py).
    """
    s = np.linspace(0.0, 1.0, 2001)
    best, best_err = (1, 1), np.inf
    for b in range(1, num_perm + 1):
        r = np.arange(1, num_perm // b + 1)[:, None]
        p = 1.0 - (1.0 - s[None, :] ** r) ** b
        fp = np.trapezoid(np.where(s <= threshold, p, 0.0), s, axis=1)
        fn = np.trapezoid(np.where(s >= threshold, 1.0 - p, 0.0), s, axis=1)
        err = (1 - fn_weight) * fp + fn_weight * fn
        i = int(np.argmin(err))
        if err[i] < best_err - 1e-12:
            best, best_err = (b, int(r[i, 0])), err[i]
    return best


def check_keep(frame: pd.DataFrame, keep: str, score_column: str | None) -> None:
    """Raise ConfigError unless keep is a policy and its score_column is a frame column."""
    if keep not in KEEP_POLICIES:
        raise ConfigError(f"keep={keep!r}: must be one of {', '.join(KEEP_POLICIES)}")
    if keep == "highest_score":
        if not score_column:
            raise ConfigError("score_column: keep='highest_score' needs the name of a column")
        if score_column not in frame.columns:
            raise ConfigError(f"score_column={score_column!r}: no such column "
                              f"(columns: {', '.join(map(str, frame.columns))})")


def _check_frame(frame: pd.DataFrame) -> None:
    for col in ("row_key", "messages"):
        if col not in frame.columns:
            raise ConfigError(f"frame: missing column {col!r} (build it with examples_frame)")
    if not frame["row_key"].is_unique:
        dup = _plain(frame["row_key"][frame["row_key"].duplicated()].iloc[0])
        raise ConfigError(f"frame.row_key: value {dup!r} appears more than once")


def _plain(value: Any) -> Any:
    """Return a numpy scalar as the Python value, so messages read 5, not np.int64(5)."""
    return value.item() if isinstance(value, np.generic) else value


def check_field(field: str) -> None:
    """Raise ConfigError unless field is one of FIELDS."""
    if field not in FIELDS:
        raise ConfigError(f"field={field!r}: must be one of {', '.join(FIELDS)}")


# --- text -----------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, str]:
    # Every Unicode punctuation code point (categories P*), not just ASCII's.
    return {cp: " " for cp in range(sys.maxunicode + 1)
            if unicodedata.category(chr(cp)).startswith("P")}


def normalize_text(text: str, *, strip_punctuation: bool = False) -> str:
    """Return text in NFKC, casefolded, optionally without punctuation, whitespace collapsed."""
    if not text.isascii():  # NFKC leaves ASCII unchanged; skipping it is most of the speed
        text = unicodedata.normalize("NFKC", text)
    text = text.casefold()
    if strip_punctuation:
        text = text.translate(_punctuation_table())
    return " ".join(text.split())


def field_texts(frame: pd.DataFrame, field: Field = "conversation") -> list[str]:
    """Return one string per row: the contents of the field's turns, joined by newlines."""
    check_field(field)
    roles = _FIELD_ROLES[field]
    return ["\n".join(m.get("content") or "" for m in messages
                      if roles is None or m.get("role") in roles)
            for messages in frame["messages"]]


def exact_keys(texts: Sequence[str], *, strip_punctuation: bool = False) -> np.ndarray:
    """Return a uint64 hash of each text's normalized form; 0 where it normalizes to ""."""
    return _keys_of([normalize_text(t, strip_punctuation=strip_punctuation) for t in texts])


def _keys_of(normalized: list[str]) -> np.ndarray:
    out = np.zeros(len(normalized), dtype=np.uint64)
    for i, norm in enumerate(normalized):
        if norm:
            digest = hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=8)
            out[i] = int.from_bytes(digest.digest(), "little") or 1
    return out


# --- MinHash signatures ---------------------------------------------------------------------

def minhash_signatures(texts: Sequence[str], config: MinHashConfig | None = None, *,
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Return a (len(texts), num_perm) uint32 signature matrix; empty texts get all 0xFFFFFFFF.

    Each row depends only on its own text, the config and the seed, so batches computed
    separately (or on other machines) stack into the same matrix. ``progress(done, total)``
    is called after each chunk of texts.
    """
    config = config or MinHashConfig()
    return _signatures_of(texts, config, lambda t: normalize_text(
        t, strip_punctuation=config.strip_punctuation), progress)


def _signatures_of(texts: Sequence[str], config: MinHashConfig,
                   normalize: Callable[[str], str],
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    out = np.empty((len(texts), config.num_perm), dtype=np.uint32)
    for start in range(0, len(texts), config.batch_size):
        docs = [normalize(t) for t in texts[start:start + config.batch_size]]
        for lo, hi in _chunks(docs):
            out[start + lo:start + hi] = _signatures(docs[lo:hi], config)
            if progress:
                progress(start + hi, len(texts))
    return out


def _chunks(docs: list[str], max_chars: int = 1 << 18) -> list[tuple[int, int]]:
    """Return (start, end) runs of docs holding about max_chars characters each."""
    # Small chunks keep numpy's temporaries in cache: 2-3x faster than one big array.
    ends = np.cumsum([len(d) + 1 for d in docs])
    bounds, lo = [], 0
    while lo < len(docs):
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + max_chars, side="right")))
        bounds.append((lo, hi))
        lo = hi
    return bounds


def _signatures(docs: list[str], config: MinHashConfig) -> np.ndarray:
    hashes, offsets = shingle_hashes(docs, ngram=config.ngram, shingle=config.shingle)
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
        hashes, offsets.astype(np.uint64), config.num_perm, config.seed)
    sig = np.asarray(matrix.to_rows(), dtype=np.uint32)
    return sig.reshape(len(docs), config.num_perm)


def shingle_hashes(docs: list[str], *, ngram: int, shingle: Shingle = "char"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Return (uint64 hash per shingle, int64 row offsets) for normalized docs.

    A doc shorter than one n-gram is a single shingle; an empty doc has none.
    """
    # "\n" never survives normalize_text, so it can mark where one doc ends.
    text = "\n".join(docs)
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    doc_start = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
    if shingle == "char":
        starts, ends, counts = _windows(doc_start, doc_start + lengths, lengths, ngram)
    else:
        starts, ends, counts = _word_windows(cp, doc_start, len(docs), ngram)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return _substring_hashes(cp, starts, ends), offsets


def _windows(unit_start: np.ndarray, unit_end_of_doc: np.ndarray, units: np.ndarray, n: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (first unit, last unit + 1, windows per doc) of every n-unit window."""
    counts = np.where(units >= n, units - n + 1, np.minimum(units, 1))
    first = np.repeat(unit_start, counts)
    local = np.arange(len(first)) - np.repeat(np.cumsum(counts) - counts, counts)
    first = first + local
    last = np.minimum(first + n, np.repeat(unit_end_of_doc, counts))
    return first, last, counts


def _word_windows(cp: np.ndarray, doc_start: np.ndarray, ndocs: int, n: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    is_sep = (cp == 32) | (cp == 10)
    prev_sep = np.concatenate([[True], is_sep[:-1]])
    next_sep = np.concatenate([is_sep[1:], [True]])
    word_start = np.flatnonzero(~is_sep & prev_sep)
    word_end = np.flatnonzero(~is_sep & next_sep) + 1
    word_doc = np.searchsorted(doc_start, word_start, side="right") - 1
    words = np.bincount(word_doc, minlength=ndocs).astype(np.int64)
    first_word = np.concatenate([[0], np.cumsum(words)[:-1]]).astype(np.int64)
    first, last, counts = _windows(first_word, first_word + words, words, n)
    return word_start[first], word_end[last - 1], counts


def _substring_hashes(cp: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Return a 64-bit hash of each cp[start:end], independent of where it sits in cp.

    Polynomial hash mod 2**64 via prefix sums: with C[k] = sum_{j<k} x[j] * B**-j,
    hash(s, e) = B**(e-1) * (C[e] - C[s]) = sum_{j=s}^{e-1} x[j] * B**(e-1-j).
    """
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64)
    x = cp.astype(np.uint64) + _U64(1)  # +1 so that a leading code point 0 still counts
    with np.errstate(over="ignore"):
        pow_b = np.cumprod(np.full(len(x) + 1, _HASH_BASE, dtype=np.uint64)) * _HASH_BASE_INV
        pow_inv = np.cumprod(np.full(len(x), _HASH_BASE_INV, dtype=np.uint64)) * _HASH_BASE
        prefix = np.concatenate([[_U64(0)], np.cumsum(x * pow_inv, dtype=np.uint64)])
        return _fmix64(pow_b[ends - 1] * (prefix[ends] - prefix[starts]))


def _fmix64(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's finalizer: spreads the polynomial hash over all 64 bits.
    with np.errstate(over="ignore"):
        h = h ^ (h >> _U64(33))
        h = h * _U64(0xFF51AFD7ED558CCD)
        h = h ^ (h >> _U64(33))
        h = h * _U64(0xC4CEB9FE1A85EC53)
        return h ^ (h >> _U64(33))


# --- candidate pairs ------------------------------------------------------------------------

def minhash_pairs(signatures: np.ndarray, config: MinHashConfig | None = None) -> pd.DataFrame:
    """Return verified near-duplicate pairs: DataFrame(left, right, similarity), positions.

    Rows with identical signatures are linked in a chain (similarity 1.0) rather than all
    pairs; the others become candidates by LSH banding and are kept when the estimated
    Jaccard (share of equal signature values) reaches the threshold.
    """
    config = config or MinHashConfig()
    signatures = np.asarray(signatures)
    if signatures.ndim != 2 or signatures.shape[1] != config.num_perm:
        raise ConfigError(f"signatures: expected shape (rows, {config.num_perm}), "
                          f"got {signatures.shape}")
    valid = np.flatnonzero(has_shingles(signatures))
    reps, copies = identical_rows(signatures, valid)
    left, right = _lsh_candidates(signatures[reps], *config.lsh_params())
    left, right = _unique_pairs(reps[left], reps[right], len(signatures))
    sim = jaccard_estimate(signatures, left, right)
    ok = near_enough(sim, config)
    return _pairs_frame(np.concatenate([copies[0], left[ok]]),
                        np.concatenate([copies[1], right[ok]]),
                        np.concatenate([np.ones(len(copies[0])), sim[ok]]))


def has_shingles(signatures: np.ndarray) -> np.ndarray:
    """Return a bool per signature row: False for a text without shingles (never matched)."""
    return ~(signatures == EMPTY_SIGNATURE).all(axis=1)


def near_enough(similarity: np.ndarray, config: MinHashConfig) -> np.ndarray:
    """Return a bool per estimated Jaccard: at or above config.threshold (float slack)."""
    return similarity >= config.threshold - 1e-9


def _unique_pairs(left: np.ndarray, right: np.ndarray, n: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    # Bands repeat pairs; verify each once.
    code = np.unique(np.minimum(left, right) * np.int64(n) + np.maximum(left, right))
    return code // n, code % n


def jaccard_estimate(signatures: np.ndarray, left: np.ndarray, right: np.ndarray,
                     *, chunk: int = 16384) -> np.ndarray:
    """Return the share of equal signature values for each (left, right) pair of rows."""
    out = np.empty(len(left), dtype=np.float64)
    for s in range(0, len(left), chunk):
        a, b = signatures[left[s:s + chunk]], signatures[right[s:s + chunk]]
        out[s:s + chunk] = (a == b).mean(axis=1)
    return out


def _pairs_frame(left: np.ndarray, right: np.ndarray, sim: np.ndarray) -> pd.DataFrame:
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    frame = pd.DataFrame({"left": lo.astype(np.int64), "right": hi.astype(np.int64),
                          "similarity": sim.astype(np.float64)})
    return frame.drop_duplicates(["left", "right"]).sort_values(
        ["left", "right"], ignore_index=True)


def row_hashes(matrix: np.ndarray) -> np.ndarray:
    """Return a uint64 hash of each row of a uint32 matrix."""
    h = np.full(len(matrix), 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in range(matrix.shape[1]):
            h = _fmix64(h ^ matrix[:, col].astype(np.uint64)) * _U64(0x100000001B3)
    return h


def identical_rows(signatures: np.ndarray, valid: np.ndarray
                   ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Return (one position per distinct signature, chain edges linking identical rows)."""
    keys = row_hashes(signatures[valid])
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    # These chain edges skip verification, so a 64-bit key collision between different
    # signatures is caught here instead.
    a, b = valid[order[:-1][same]], valid[order[1:][same]]
    equal = (signatures[a] == signatures[b]).all(axis=1)
    first = np.concatenate([[True], ~same]) if len(order) else np.zeros(0, bool)
    reps = np.sort(valid[order[first]])
    extra = b[~equal]  # collided but different: keep as its own representative
    return np.union1d(reps, extra), (a[equal], b[equal])


def _lsh_candidates(sig: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Return candidate pairs (positions in sig) sharing at least one LSH band."""
    lefts, rights = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for keys in band_keys(sig, bands, rows).T:
        left, right = bucket_pairs(keys)
        lefts.append(left)
        rights.append(right)
    return np.concatenate(lefts), np.concatenate(rights)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Return a (len(sig), bands) uint64 matrix: the hash of each row's values in each band."""
    out = np.empty((len(sig), bands), dtype=np.uint64)
    for band in range(bands):
        out[:, band] = row_hashes(sig[:, band * rows:(band + 1) * rows])
    return out


def bucket_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return pairs of positions with equal keys (each with its next _MAX_BUCKET_PAIRS)."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    in_bucket = np.zeros(len(sk), dtype=bool)
    if len(sk) > 1:
        dup = sk[1:] == sk[:-1]
        in_bucket[1:] |= dup
        in_bucket[:-1] |= dup
    order, sk = order[in_bucket], sk[in_bucket]
    lefts, rights = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for d in range(1, min(len(sk), _MAX_BUCKET_PAIRS + 1)):
        match = sk[d:] == sk[:-d]
        if not match.any():
            break
        lefts.append(order[:-d][match])
        rights.append(order[d:][match])
    return np.concatenate(lefts), np.concatenate(rights)


def cosine_pairs(vectors: np.ndarray, threshold: float, *, block_size: int = 1024
                 ) -> pd.DataFrame:
    """Return pairs with cosine similarity >= threshold: DataFrame(left, right, similarity).

    Blocked matrix product over unit vectors: memory stays at block_size**2 floats.
    """
    unit = _unit_rows(vectors)
    lefts, rights, sims = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for i0 in range(0, len(unit), block_size):
        for j0 in range(i0, len(unit), block_size):
            block = unit[i0:i0 + block_size] @ unit[j0:j0 + block_size].T
            i, j = _hits(block, threshold - 1e-6)
            if i0 == j0:  # each pair once, never a row with itself
                i, j = i[j > i], j[j > i]
            lefts.append(i + i0)
            rights.append(j + j0)
            sims.append(block[i, j].astype(np.float64))
    return _pairs_frame(np.concatenate(lefts), np.concatenate(rights),
                        np.minimum(np.concatenate(sims), 1.0))


def _hits(block: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    # np.nonzero over the whole block costs more than the product; most rows have no hit.
    rows = np.flatnonzero(block.max(axis=1) >= threshold)
    i, j = np.nonzero(block[rows] >= threshold)
    return rows[i], j


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


# --- union-find -----------------------------------------------------------------------------

def connected_components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Return, for each of n nodes, the smallest node of its connected component."""
    label = np.arange(n, dtype=np.int64)
    left, right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    while len(left):
        # Union: hook each edge's larger root under its smaller one.
        ru, rv = label[left], label[right]
        low = np.minimum(ru, rv)
        new = label.copy()
        np.minimum.at(new, ru, low)
        np.minimum.at(new, rv, low)
        # Find with path compression: jump pointers until every node points at a root.
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            break
        label = new
    return label


# --- finding clusters -----------------------------------------------------------------------

@dataclass
class _Found:
    """Edges per method (positions), the exact groups and similarity lookups for a frame."""

    edges: dict[str, pd.DataFrame]
    exact_group: np.ndarray
    similarity: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]


def exact_duplicates(frame: pd.DataFrame, *, field: Field = "conversation",
                     strip_punctuation: bool = False, keep: KeepPolicy = "first",
                     score_column: str | None = None) -> pd.DataFrame:
    """Return clusters of rows whose field is identical after normalization."""
    return find_duplicates(frame, field=field, strip_punctuation=strip_punctuation,
                           keep=keep, score_column=score_column)


def near_duplicates(frame: pd.DataFrame, *, field: Field = "conversation",
                    config: MinHashConfig | None = None, keep: KeepPolicy = "first",
                    score_column: str | None = None,
                    signatures: np.ndarray | None = None) -> pd.DataFrame:
    """Return clusters of rows whose MinHash-estimated Jaccard reaches config.threshold.

    ``signatures`` (from `minhash_signatures` on `field_texts`, e.g. computed batch by
    batch) skips computing them here. Rows identical after normalization are included.
    """
    config = config or MinHashConfig()
    return find_duplicates(frame, field=field, near=config, keep=keep,
                           score_column=score_column, signatures=signatures,
                           strip_punctuation=config.strip_punctuation)


def semantic_duplicates(frame: pd.DataFrame, *, embeddings: np.ndarray | None = None,
                        embed: Callable[[list[str]], np.ndarray] | None = None,
                        threshold: float = DEFAULT_COSINE_THRESHOLD,
                        field: Field = "conversation", keep: KeepPolicy = "first",
                        score_column: str | None = None) -> pd.DataFrame:
    """Return clusters of rows whose embeddings have cosine similarity >= threshold.

    Give ``embeddings`` (one row per frame row, e.g. from a cache) or ``embed`` (called once
    with the non-empty field texts). Rows whose field is empty are never clustered.
    """
    return find_duplicates(frame, field=field, semantic_threshold=threshold,
                           embeddings=embeddings, embed=embed, keep=keep,
                           score_column=score_column)


def find_duplicates(frame: pd.DataFrame, *, field: Field = "conversation",
                    near: MinHashConfig | None = None, semantic_threshold: float | None = None,
                    embeddings: np.ndarray | None = None,
                    embed: Callable[[list[str]], np.ndarray] | None = None,
                    keep: KeepPolicy = "first", score_column: str | None = None,
                    strip_punctuation: bool = False,
                    signatures: np.ndarray | None = None,
                    progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Return clusters joining exact duplicates with near and/or semantic ones when asked.

    A cluster's ``method`` is its loosest link (semantic > near > exact); each member's
    ``similarity`` is to the kept member under that method (1.0 for exact copies).
    ``progress(rows_hashed, rows)`` follows the MinHash signatures, the bulk of the work.
    """
    _check_frame(frame)
    check_field(field)
    check_keep(frame, keep, score_column)
    found = _find_edges(frame, field, near, semantic_threshold, embeddings, embed,
                        strip_punctuation, signatures, progress)
    return _clusters(frame, found, keep, score_column)


def _find_edges(frame: pd.DataFrame, field: str, near: MinHashConfig | None,
                semantic_threshold: float | None, embeddings: Any, embed: Any,
                strip_punctuation: bool, signatures: Any, progress: Any = None) -> _Found:
    texts = field_texts(frame, field)  # type: ignore[arg-type]
    keys, sig = row_keys_and_signatures(texts, near=near, strip_punctuation=strip_punctuation,
                                        signatures=signatures, progress=progress)
    group = dense_groups(keys)
    found = _Found({"exact": exact_edges(group)}, group, {})
    if near is not None:
        found.edges["near"] = minhash_pairs(sig, near)
        found.similarity["near"] = lambda a, b: jaccard_estimate(sig, a, b)
    if semantic_threshold is not None:
        unit = _unit_rows(_embeddings(texts, keys, embeddings, embed))
        unit[keys == 0] = 0.0  # empty fields never match
        found.edges["semantic"] = cosine_pairs(unit, _check_cosine(semantic_threshold))
        found.similarity["semantic"] = lambda a, b: np.minimum(
            (unit[a] * unit[b]).sum(axis=1).astype(np.float64), 1.0)
    return found


def row_keys_and_signatures(texts: Sequence[str], *, near: MinHashConfig | None,
                            strip_punctuation: bool = False, signatures: Any = None,
                            progress: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (exact key per text, MinHash signatures or None when near is None).

    Row-wise: batches computed apart (e.g. by Ray Data's map_batches) give the same values.
    """
    normalized = [normalize_text(t, strip_punctuation=strip_punctuation) for t in texts]
    keys = _keys_of(normalized)
    if near is None:
        return keys, None
    same = near.strip_punctuation == strip_punctuation
    return keys, _given_signatures(signatures, len(texts), near,
                                   normalized if same else list(texts), same, progress)


def dense_groups(keys: np.ndarray) -> np.ndarray:
    """Return a group number per row (rows with equal non-zero keys share one), -1 for 0."""
    codes, _ = pd.factorize(keys)
    return np.where(keys == 0, -1, codes).astype(np.int64)


def exact_edges(group: np.ndarray) -> pd.DataFrame:
    """Return chain edges (a pairs frame) linking each exact group's rows in position order."""
    rows = np.flatnonzero(group >= 0)
    order = rows[np.argsort(group[rows], kind="stable")]
    same = group[order[1:]] == group[order[:-1]]
    return _pairs_frame(order[:-1][same], order[1:][same], np.ones(int(same.sum())))


def _given_signatures(signatures: Any, n: int, config: MinHashConfig, texts: list[str],
                      normalized: bool, progress: Any = None) -> np.ndarray:
    if signatures is None and normalized:
        return _signatures_of(texts, config, lambda t: t, progress)
    if signatures is None:
        return minhash_signatures(texts, config, progress=progress)
    sig = np.asarray(signatures)
    if sig.shape != (n, config.num_perm) or sig.dtype != np.uint32:
        raise ConfigError(f"signatures: expected uint32 of shape ({n}, {config.num_perm}), "
                          f"got {sig.dtype} {sig.shape}; use minhash_signatures")
    return sig


def _check_cosine(threshold: float) -> float:
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold={threshold}: cosine threshold must be in (0, 1]")
    return float(threshold)


def _embeddings(texts: list[str], keys: np.ndarray, embeddings: Any, embed: Any) -> np.ndarray:
    if (embeddings is None) == (embed is None):
        raise ConfigError("embeddings, embed: give exactly one (an array aligned with the "
                          "rows, or a function from texts to an array)")
    if embeddings is None:
        todo = np.flatnonzero(keys != 0)
        got = np.asarray(embed([texts[i] for i in todo]) if len(todo) else np.zeros((0, 1)))
        _check_vectors(got, len(todo), "embed(texts)")
        embeddings = np.zeros((len(texts), got.shape[1]), np.float32)
        embeddings[todo] = got
    vectors = np.asarray(embeddings)
    _check_vectors(vectors, len(texts), "embeddings")
    return vectors


def _check_vectors(vectors: np.ndarray, n: int, name: str) -> None:
    if vectors.ndim != 2 or len(vectors) != n:
        raise ConfigError(f"{name}: expected a 2-D array with {n} rows, got shape "
                          f"{vectors.shape}")
    if not np.issubdtype(vectors.dtype, np.number) or not np.isfinite(vectors).all():
        raise ConfigError(f"{name}: values must be finite numbers")


def _clusters(frame: pd.DataFrame, found: _Found, keep: str,
              score_column: str | None) -> pd.DataFrame:
    edges = pd.concat(list(found.edges.values()), ignore_index=True)
    label = connected_components(len(frame), edges["left"].to_numpy(),
                                 edges["right"].to_numpy())
    return clusters_from_labels(frame, label, found.exact_group, found.similarity, keep,
                                score_column, lambda: _cluster_methods(
                                    label, found.edges, found.exact_group))


def clusters_from_labels(frame: pd.DataFrame, label: np.ndarray, exact_group: np.ndarray,
                         similarity: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]],
                         keep: str, score_column: str | None,
                         methods: Callable[[], dict[int, str]]) -> pd.DataFrame:
    """Return the clusters frame of ``frame`` given each row's component.

    ``label[i]`` is the smallest position (in frame) of row i's connected component, as
    `connected_components` returns; ``exact_group`` is `dense_groups` of the rows' exact keys;
    ``similarity[method](a, b)`` scores rows a against rows b; ``methods()`` (called only when
    some cluster exists) maps each cluster's label to its loosest method. Keepers follow
    ``keep``; the result is ordered and typed as `find_duplicates` returns it.
    """
    n = len(frame)
    size = np.bincount(label, minlength=n)[label]
    members = np.flatnonzero(size > 1)
    if len(members) == 0:
        return empty_clusters()
    keeper, why = _keepers(frame, label, members, keep, score_column)
    return _cluster_frame(frame, _Found({}, exact_group, similarity), label, members,
                          methods(), keeper, why, size)


def _cluster_methods(label: np.ndarray, edges: dict[str, pd.DataFrame],
                     group: np.ndarray) -> dict[int, str]:
    """Return, for each cluster root, its loosest method."""
    method: dict[int, str] = {}
    for name in ("exact", "near", "semantic"):  # later (looser) methods overwrite
        if name not in edges:
            continue
        left, right = edges[name]["left"].to_numpy(), edges[name]["right"].to_numpy()
        # A fuzzy edge between copies of one text is still an exact link.
        loose = (group[left] != group[right]) | (name == "exact")
        for root in np.unique(label[left[loose]]):
            method[int(root)] = name
    return method


def _keep_priority(frame: pd.DataFrame, keep: str, score_column: str | None
                   ) -> tuple[np.ndarray, list[str]]:
    """Return (sort key: lower is kept first, why text per row)."""
    n = len(frame)
    if keep == "first":
        return np.zeros(n), ["first in input order"] * n
    if keep == "longest":
        lengths = _response_lengths(frame)
        return -lengths.astype(np.float64), [f"longest response ({k} chars)" for k in lengths]
    scores = pd.to_numeric(frame[score_column], errors="coerce").to_numpy(dtype=np.float64)
    priority = np.where(np.isnan(scores), np.inf, -scores)
    return priority, [f"highest {score_column} ({s:.4g})" for s in scores]


def _response_lengths(frame: pd.DataFrame) -> np.ndarray:
    responses = frame["response"] if "response" in frame.columns else (
        response_text(m) for m in frame["messages"])
    return np.fromiter((len(r) if isinstance(r, str) else 0 for r in responses),
                       dtype=np.int64, count=len(frame))


def _keepers(frame: pd.DataFrame, label: np.ndarray, members: np.ndarray, keep: str,
             score_column: str | None) -> tuple[dict[int, int], dict[int, str]]:
    """Return (cluster root -> kept position, cluster root -> why) under the keep policy."""
    priority, why = _keep_priority(frame, keep, score_column)
    order = members[np.lexsort((members, priority[members], label[members]))]
    first = np.concatenate([[True], label[order[1:]] != label[order[:-1]]])
    kept = order[first]
    return ({int(label[p]): int(p) for p in kept}, {int(label[p]): why[p] for p in kept})


def _cluster_frame(frame: pd.DataFrame, found: _Found, label: np.ndarray,
                   members: np.ndarray, method: dict[int, str], keeper: dict[int, int],
                   why: dict[int, str], size: np.ndarray) -> pd.DataFrame:
    roots = label[members]
    kept_pos = np.array([keeper[int(r)] for r in roots], dtype=np.int64)
    methods = np.array([method[int(r)] for r in roots], dtype=object)
    similarity = np.ones(len(members))
    for name, fn in found.similarity.items():
        mask = (methods == name) & (found.exact_group[members] != found.exact_group[kept_pos])
        if mask.any():
            similarity[mask] = fn(members[mask], kept_pos[mask])
    row_keys = frame["row_key"].to_numpy()
    out = pd.DataFrame({
        "cluster_id": pd.factorize(roots, sort=True)[0].astype(np.int64),
        "row_key": row_keys[members], "kept": members == kept_pos,
        "method": methods.astype(str), "similarity": similarity,
        "exact_group": found.exact_group[members], "size": size[members],
        "keep_reason": [why[int(r)] for r in roots], "_pos": members})
    out = out.sort_values(["cluster_id", "kept", "_pos"], ascending=[True, False, True])
    return out.drop(columns="_pos").reset_index(drop=True)


def empty_clusters() -> pd.DataFrame:
    """Return a clusters frame with no rows and find_duplicates's columns and dtypes."""
    return pd.DataFrame({
        "cluster_id": pd.Series(dtype=np.int64), "row_key": pd.Series(dtype=np.int64),
        "kept": pd.Series(dtype=bool), "method": pd.Series(dtype=str),
        "similarity": pd.Series(dtype=np.float64), "exact_group": pd.Series(dtype=np.int64),
        "size": pd.Series(dtype=np.int64), "keep_reason": pd.Series(dtype=str)})


# --- applying clusters ----------------------------------------------------------------------

def apply_clusters(frame: pd.DataFrame, clusters: pd.DataFrame, *,
                   overrides: Mapping[int, Any] | None = None) -> StepResult:
    """Return the StepResult keeping one member per cluster and dropping the others.

    ``overrides`` maps a cluster_id to the row_key to keep instead, or to KEEP_ALL ("all")
    to keep every member of that cluster.
    """
    _check_frame(frame)
    _check_clusters(frame, clusters)
    dropped = _dropped_rows(clusters, dict(overrides or {}))
    kept = frame[~frame["row_key"].isin(dropped["row_key"])]
    return StepResult(kept=kept, dropped=dropped)


def _check_clusters(frame: pd.DataFrame, clusters: pd.DataFrame) -> None:
    missing = [c for c in CLUSTER_COLUMNS if c not in clusters.columns]
    if missing:
        raise ConfigError(f"clusters: missing columns {missing}; build clusters with "
                          "find_duplicates")
    unknown = ~clusters["row_key"].isin(frame["row_key"])
    if unknown.any():
        raise ConfigError(f"clusters.row_key: {_plain(clusters['row_key'][unknown].iloc[0])!r}"
                          " is not a row of this frame")
    if not clusters["row_key"].is_unique:
        raise ConfigError("clusters.row_key: a row is in more than one cluster; find all "
                          "methods in one call to find_duplicates")


def _check_overrides(clusters: pd.DataFrame, overrides: dict[int, Any]) -> None:
    if not overrides:
        return
    cluster_of = clusters.drop_duplicates("row_key").set_index("row_key")["cluster_id"]
    known = set(clusters["cluster_id"].unique().tolist())
    for cid, choice in overrides.items():
        if cid not in known:
            raise ConfigError(f"overrides: cluster {_plain(cid)!r} does not exist")
        if choice != KEEP_ALL and cluster_of.get(choice) != cid:
            members = clusters.loc[clusters["cluster_id"] == cid, "row_key"]
            raise ConfigError(f"overrides[{_plain(cid)}]: row_key {_plain(choice)!r} is not in "
                              f"that cluster (members: {sorted(map(_plain, members))}); "
                              f"or use {KEEP_ALL!r}")


def drop_plan(clusters: pd.DataFrame, overrides: Mapping[int, Any] | None = None
              ) -> pd.DataFrame:
    """Return, for each row that ``apply_clusters`` drops, in its order (cluster by cluster,
    members in cluster order): ``row_key``, ``cluster_id``, ``method`` (exact when it is
    identical to the row kept), ``keeper`` (the row kept), ``default`` (the row the policy
    keeps), ``why`` (why the keeper is kept), ``similarity`` and ``size``. Vectorised: a
    million-row version's clusters take a second, not a loop per cluster. ConfigError naming
    an override whose cluster or row does not exist."""
    overrides = dict(overrides or {})
    _check_overrides(clusters, overrides)
    c = clusters.sort_values("cluster_id", kind="stable").reset_index(drop=True)
    first_kept = c.loc[c["kept"].astype(bool)].drop_duplicates("cluster_id") \
        .set_index("cluster_id")
    cid = c["cluster_id"]
    default = first_kept["row_key"].reindex(cid).to_numpy()
    choice = cid.map(overrides) if overrides else pd.Series(None, index=c.index, dtype=object)
    keep_all = (choice == KEEP_ALL).to_numpy(dtype=bool)
    chosen = (choice.notna() & ~(choice == KEEP_ALL)).to_numpy(dtype=bool)
    keeper = default.copy()
    if chosen.any():
        keeper[chosen] = choice[chosen].astype(np.int64).to_numpy()
    group_of = c.drop_duplicates("row_key").set_index("row_key")["exact_group"]
    keeper_group = group_of.reindex(keeper).to_numpy()
    groups = c["exact_group"].to_numpy()
    exact = (groups >= 0) & (groups == keeper_group)
    why = np.where(chosen, "chosen by hand",
                   first_kept["keep_reason"].reindex(cid).to_numpy(dtype=object))
    drop = ~keep_all & (c["row_key"].to_numpy() != keeper)
    return pd.DataFrame({
        "row_key": c["row_key"].to_numpy()[drop].astype(np.int64),
        "cluster_id": cid.to_numpy()[drop],
        "method": np.where(exact, "exact", c["method"].to_numpy(dtype=object))[drop],
        "keeper": keeper[drop].astype(np.int64), "default": default[drop].astype(np.int64),
        "why": why[drop], "similarity": c["similarity"].to_numpy(dtype=float)[drop],
        "size": c["size"].to_numpy()[drop]})


def _dropped_rows(clusters: pd.DataFrame, overrides: dict[int, Any]) -> pd.DataFrame:
    plan = drop_plan(clusters, overrides)
    details = [_drop_detail(*row) for row in zip(
        plan["cluster_id"].tolist(), plan["method"].tolist(), plan["keeper"].tolist(),
        plan["default"].tolist(), plan["why"].tolist(), plan["similarity"].tolist(),
        plan["size"].tolist())]
    dropped = pd.DataFrame({"row_key": plan["row_key"].tolist(),
                            "reason": [REASONS[m] for m in plan["method"].tolist()],
                            "duplicate_of": plan["keeper"].tolist(), "detail": details},
                           columns=list(DROP_COLUMNS)) if len(plan) else \
        pd.DataFrame([], columns=list(DROP_COLUMNS))
    dropped["row_key"] = dropped["row_key"].astype(np.int64)
    dropped["duplicate_of"] = dropped["duplicate_of"].astype("Int64")
    return dropped


def _drop_detail(cid: int, method: str, keeper: int, default: int, why: str,
                 similarity: float, size: int) -> str:
    if method == "exact":
        how = "identical after normalization"
    else:
        measure = "estimated Jaccard" if method == "near" else "cosine"
        how = f"{measure} {similarity:.3f} to row {int(default)}"
    return (f"{method} duplicate of row {int(keeper)} ({how}); cluster {int(cid)} "
            f"of {int(size)}, kept row {int(keeper)}: {why}")


# --- threshold explorer ---------------------------------------------------------------------

def threshold_curve(frame: pd.DataFrame, method: Literal["near", "semantic"],
                    thresholds: Sequence[float], *, field: Field = "conversation",
                    config: MinHashConfig | None = None, embeddings: np.ndarray | None = None,
                    embed: Callable[[list[str]], np.ndarray] | None = None,
                    signatures: np.ndarray | None = None,
                    progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Return DataFrame(threshold, rows_removed, clusters), one row per threshold given.

    Pairs are found once at the lowest threshold and then filtered; for "near" the LSH bands
    of the lowest threshold find a superset of the candidates each higher threshold would.
    """
    _check_frame(frame)
    check_field(field)
    if method not in ("near", "semantic") or not len(thresholds):
        raise ConfigError(f"method={method!r}, thresholds={list(thresholds)}: method must be "
                          "'near' or 'semantic' and thresholds non-empty")
    low = float(min(thresholds))
    pairs = _pairs_at(frame, method, low, field, config, embeddings, embed, signatures,
                      progress)
    return _sweep(len(frame), pairs, thresholds)


def _pairs_at(frame: pd.DataFrame, method: str, low: float, field: str,
              config: MinHashConfig | None, embeddings: Any, embed: Any,
              signatures: Any, progress: Any = None) -> pd.DataFrame:
    if method == "near":
        config = _with_threshold(config or MinHashConfig(), low)
        found = _find_edges(frame, field, config, None, None, None,
                            config.strip_punctuation, signatures, progress)
    else:
        found = _find_edges(frame, field, None, low, embeddings, embed, False, None)
    return pd.concat(list(found.edges.values()), ignore_index=True)


def _with_threshold(config: MinHashConfig, threshold: float) -> MinHashConfig:
    options = asdict(config)
    options["threshold"] = threshold
    return MinHashConfig(**options)


def _sweep(n: int, pairs: pd.DataFrame, thresholds: Sequence[float]) -> pd.DataFrame:
    left, right = pairs["left"].to_numpy(), pairs["right"].to_numpy()
    sim = pairs["similarity"].to_numpy()
    rows = []
    for t in thresholds:
        keep = sim >= float(t) - 1e-6
        label = connected_components(n, left[keep], right[keep])
        sizes = np.bincount(label, minlength=n)
        clusters = int((sizes > 1).sum())
        rows.append((float(t), int(sizes[sizes > 1].sum()) - clusters, clusters))
    return pd.DataFrame(rows, columns=["threshold", "rows_removed", "clusters"])
