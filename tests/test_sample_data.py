"""The sample data: the generator is reproducible, rows parse, and the defect manifest is exact."""

from __future__ import annotations

import importlib.util
import re
from itertools import combinations
from pathlib import Path

import orjson
import pytest

from workbench.schema import RowError, detect_shape, to_example

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
CHAT_FILES = ("support_train.jsonl", "support_eval.jsonl", "support_pool.jsonl")
ALL_FILES = CHAT_FILES + ("messy_import.jsonl", "defects.json")
GREETING = "Thanks for reaching out!"
SIGNATURE = "— Northwind Support"
CATEGORIES = {"billing", "plans", "refunds", "account", "security", "sync_errors", "sharing",
              "data_export", "mobile_app", "file_recovery"}
PLACEHOLDERS = {"N/A", "<noinput>", "<No output>", "TODO", "TBD"}
PII_PATTERNS = {
    "email": r"[\w.+-]+@[\w-]+\.[\w.]+",
    "phone": r"\+?\(?\d[\d ()-]{8,}\d",
    "credit_card": r"\b(?:\d[ -]?){13,19}\b",
    "ipv4": r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
    "openai_key": r"\bsk-[A-Za-z0-9]{20,}",
    "aws_key": r"\bAKIA[0-9A-Z]{16}\b",
}
REFUSAL = re.compile(r"as an ai|\bI cannot\b|\bI can't\b|\bunable\b|not able|\bsorry\b", re.I)
MISSING_CONTEXT = re.compile(r"attach|screenshot|\bbelow\b|\babove\b|\bimage\b|recording", re.I)
STOPWORDS = {"es": {"el", "la", "de", "que", "y", "en", "los", "tu", "para", "con"},
             "de": {"der", "die", "und", "ist", "sie", "ihre", "den", "zu", "das", "auf"},
             "fr": {"le", "la", "les", "de", "et", "vous", "votre", "pour", "un", "des"}}
ROW_MAX_SIMILARITY = 0.6


def load(name: str) -> list[dict]:
    return [orjson.loads(line) for line in (SAMPLE_DIR / name).read_bytes().splitlines()]


@pytest.fixture(scope="module")
def manifest() -> dict:
    return orjson.loads((SAMPLE_DIR / "defects.json").read_bytes())


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return load("support_train.jsonl")


@pytest.fixture(scope="module")
def defects(manifest: dict) -> dict[int, dict]:
    return {d["line"]: d for d in manifest["support_train.jsonl"]["defects"]}


def response(row: dict) -> str:
    return [m for m in row["messages"] if m["role"] == "assistant"][-1]["content"]


def first_prompt(row: dict) -> str:
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


def text(row: dict) -> str:
    return "\n".join(m["content"] for m in row["messages"] if m["role"] != "system")


def shingles(s: str) -> frozenset:
    words = re.findall(r"\w+", s.lower())
    return frozenset(zip(words, words[1:], words[2:]))


def jaccard(a: frozenset, b: frozenset) -> float:
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter) if a or b else 0.0


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
                for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def clean_rows(train: list[dict], defects: dict[int, dict]) -> list[dict]:
    return [r for i, r in enumerate(train, 1) if i not in defects]


# --- the generator ----------------------------------------------------------------------------

def test_generator_reproduces_the_committed_files_byte_for_byte(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_sample_data",
                                                  SAMPLE_DIR / "make_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(tmp_path)])
    for name in ALL_FILES:
        assert (tmp_path / name).read_bytes() == (SAMPLE_DIR / name).read_bytes(), name


def test_files_have_the_promised_sizes(manifest: dict) -> None:
    assert [len(load(n)) for n in CHAT_FILES] == [400, 60, 200]
    assert manifest["support_train.jsonl"]["rows"] == 400
    assert sum((SAMPLE_DIR / n).stat().st_size for n in ALL_FILES) < 1_000_000


@pytest.mark.parametrize("name", CHAT_FILES)
def test_every_chat_row_parses_as_openai(name: str) -> None:
    for line, record in enumerate(load(name), 1):
        assert detect_shape(record) == "openai", (name, line)
        example = to_example(record, "openai")
        assert example.metadata["category"] in CATEGORIES, (name, line)
        assert example.metadata["product"] and example.metadata["source"], (name, line)


# --- the house style --------------------------------------------------------------------------

def assert_clean(row: dict, where: str) -> None:
    for m in row["messages"]:
        if m["role"] == "assistant":
            answer = m["content"]
            assert answer.startswith(GREETING + " "), where
            assert answer.endswith("\n\n" + SIGNATURE), where
            assert 40 <= len(answer.split()) <= 120, where
            assert not REFUSAL.search(answer), where
        assert m["content"].isascii() or set(m["content"]) - set(map(chr, range(128))) == {"—"}
    body = text(row)
    for kind, pattern in PII_PATTERNS.items():
        assert not re.search(pattern, body), (where, kind)
    assert not MISSING_CONTEXT.search(body), where


def test_clean_rows_follow_the_style(train: list[dict], defects: dict[int, dict]) -> None:
    for line, row in enumerate(train, 1):
        if line not in defects:
            assert_clean(row, f"train line {line}")
    for name in CHAT_FILES[1:]:
        for line, row in enumerate(load(name), 1):
            assert_clean(row, f"{name} line {line}")


def test_about_ten_percent_of_rows_are_multi_turn(train: list[dict]) -> None:
    for rows in (train, load("support_eval.jsonl"), load("support_pool.jsonl")):
        multi = sum(sum(m["role"] == "user" for m in r["messages"]) > 1 for r in rows)
        assert 0.05 <= multi / len(rows) <= 0.15


def test_no_unplanted_near_duplicates_anywhere(train: list[dict],
                                              defects: dict[int, dict]) -> None:
    rows = clean_rows(train, defects) + load("support_eval.jsonl") + load("support_pool.jsonl")
    sh = [shingles(text(r)) for r in rows]
    worst = max(jaccard(a, b) for a, b in combinations(sh, 2))
    assert worst < ROW_MAX_SIMILARITY
    prompts = [first_prompt(r).lower() for r in rows]
    assert len(set(prompts)) == len(prompts)


def test_eval_and_pool_are_held_out(train: list[dict], defects: dict[int, dict]) -> None:
    eval_rows, pool = load("support_eval.jsonl"), load("support_pool.jsonl")
    contaminated = {first_prompt(train[i - 1]) for i, d in defects.items()
                    if d["defect"] == "contamination"}
    train_prompts = {first_prompt(r) for r in train}
    assert {first_prompt(r) for r in eval_rows} & train_prompts == contaminated
    assert not {first_prompt(r) for r in pool} & (train_prompts | {first_prompt(r)
                                                                   for r in eval_rows})
    per_category = {c: sum(r["category"] == c for r in eval_rows) for c in CATEGORIES}
    assert set(per_category.values()) == {6}


# --- the train manifest -----------------------------------------------------------------------

def test_manifest_is_well_formed(manifest: dict, train: list[dict]) -> None:
    part = manifest["support_train.jsonl"]
    lines = [d["line"] for d in part["defects"]]
    assert lines == sorted(set(lines)) and 1 <= lines[0] and lines[-1] <= len(train)
    kinds = [d["defect"] for d in part["defects"]]
    assert part["counts"] == {k: kinds.count(k) for k in part["counts"]}
    assert all(8 <= n <= 15 for n in part["counts"].values())
    assert manifest["style"] == {"starts_with": GREETING, "ends_with": SIGNATURE,
                                 "min_words": 40, "max_words": 120}


def check_exact_duplicate(row: dict, d: dict, train: list[dict], defects: dict) -> None:
    original = d["duplicate_of_line"]
    assert original < d["line"] and original not in defects
    assert row == train[original - 1]


def check_near_duplicate(row: dict, d: dict, train: list[dict], defects: dict) -> None:
    original = d["duplicate_of_line"]
    assert original < d["line"] and original not in defects
    other = train[original - 1]
    assert row != other
    assert jaccard(shingles(text(row)), shingles(text(other))) >= 0.75
    assert_clean(row, f"near duplicate line {d['line']}")


def check_placeholder(row: dict, d: dict, *_: object) -> None:
    assert response(row) == d["planted"] and d["planted"] in PLACEHOLDERS


def check_pii(row: dict, d: dict, *_: object) -> None:
    assert d["planted"] in text(row)
    assert re.fullmatch(PII_PATTERNS[d["pii_kind"]], d["planted"])
    if d["pii_kind"] == "credit_card":
        assert luhn_ok(d["planted"])
    assert response(row).endswith(SIGNATURE)


def check_refusal(row: dict, d: dict, *_: object) -> None:
    assert response(row) == d["planted"] and REFUSAL.search(d["planted"])


def check_truncated(row: dict, d: dict, *_: object) -> None:
    answer = response(row)
    assert answer.startswith(GREETING) and SIGNATURE not in answer
    assert answer[-1].isalpha()


def check_overlong(row: dict, d: dict, *_: object) -> None:
    answer = response(row)
    lines = [re.sub(r"^\d+\. ", "", x) for x in answer.splitlines() if x.strip()]
    assert len(answer.split()) > 250
    assert max(lines.count(x) for x in lines) >= 3


def check_off_style(row: dict, d: dict, *_: object) -> None:
    answer = response(row)
    assert not answer.startswith(GREETING) and SIGNATURE not in answer
    assert len(answer.split()) >= 20


def check_non_english(row: dict, d: dict, *_: object) -> None:
    words = set(re.findall(r"\w+", text(row).lower()))
    assert len(words & STOPWORDS[d["language"]]) >= 3
    assert not response(row).startswith(GREETING)


def check_missing_context(row: dict, d: dict, *_: object) -> None:
    assert d["planted"] in text(row) and MISSING_CONTEXT.search(d["planted"])


def check_contamination(row: dict, d: dict, *_: object) -> None:
    eval_row = load("support_eval.jsonl")[d["eval_line"] - 1]
    assert row["messages"] == eval_row["messages"]


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items()
          if name.startswith("check_")}


def test_every_manifest_line_has_its_defect(manifest: dict, train: list[dict],
                                            defects: dict[int, dict]) -> None:
    assert set(manifest["support_train.jsonl"]["counts"]) == set(CHECKS)
    for line, d in defects.items():
        CHECKS[d["defect"]](train[line - 1], d, train, defects)
        if d["defect"] not in ("exact_duplicate", "near_duplicate"):
            assert d["duplicate_of_line"] is None


# --- the messy import file --------------------------------------------------------------------
REASON_TEXT = {"not_object": "expected a JSON object", "missing_field": "missing field",
               "empty_content": "empty content", "unknown_role": "unknown role",
               "wrong_type": "wrong type", "no_assistant": "no assistant turn"}


def test_messy_import_lines_are_accounted_for(manifest: dict) -> None:
    part = manifest["messy_import.jsonl"]
    raw = (SAMPLE_DIR / "messy_import.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    lines = raw[:-1].split(b"\n")
    rejected = {r["line"]: r for r in part["rejected"]}
    assert part["lines"] == len(lines)
    assert sorted([*part["valid_lines"], *part["blank_lines"], *rejected]) == \
        list(range(1, len(lines) + 1))
    assert all(not lines[n - 1].strip() for n in part["blank_lines"])
    shapes = {detect_shape(orjson.loads(lines[n - 1])) for n in part["valid_lines"]}
    assert shapes == {"openai", "alpaca", "sharegpt", "prompt_completion"}
    for n in part["valid_lines"]:
        record = orjson.loads(lines[n - 1])
        to_example(record, detect_shape(record))


def test_messy_import_rejects_fail_for_the_stated_reason(manifest: dict) -> None:
    lines = (SAMPLE_DIR / "messy_import.jsonl").read_bytes().split(b"\n")
    reasons = set()
    for r in manifest["messy_import.jsonl"]["rejected"]:
        reasons.add(r["reason"])
        raw = lines[r["line"] - 1]
        if r["reason"] == "bad_json":
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(raw)
            continue
        record = orjson.loads(raw)
        with pytest.raises(RowError) as err:
            to_example(record, detect_shape(record) or r["shape"])
        assert err.value.field == r["field"], r
        assert REASON_TEXT[r["reason"]] in err.value.reason, r
    assert reasons == {"bad_json", *REASON_TEXT}
