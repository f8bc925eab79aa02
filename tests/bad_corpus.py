"""Writes the bad-input corpus: files a user could hand to `workbench import`, `eval-import`,
`label --file` and `train --config`, each wrong in its own way (broken JSON, wrong encodings,
binary data, wrong types, huge values, missing fields, ...). Nothing is copied from anywhere:
every byte is written here.

    python tests/bad_corpus.py OUT_FOLDER      # writes the corpus and lists it

``write_corpus(folder)`` returns the cases; tests/test_bad_corpus.py runs each through the CLI.
"""

from __future__ import annotations

import codecs
import gzip
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["import", "eval-import", "labels", "config"]


@dataclass(frozen=True)
class Case:
    """One corpus file: which command reads it, its path, and what is wrong with it."""

    kind: Kind
    path: Path
    what: str


def _chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}?"},
                         {"role": "assistant", "content": f"answer {i}."}]}


def _line(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"


GOOD = _line(_chat(0)) + _line(_chat(1))  # two good rows, so a bad row is one of several
PRED = {"prompt": "2+2?", "reference": "4", "prediction": "4", "model": "m"}
GOOD_PRED = _line(PRED)


def _import_files() -> dict[str, tuple[bytes, str]]:
    """Return dataset files to import: name -> (bytes, what is wrong)."""
    nested = b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x"} for i in range(1500)]
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    return {
        "empty.jsonl": (b"", "an empty file"),
        "blank.jsonl": (b"\n \n\t\n", "only blank lines"),
        "garbage_lines.jsonl": (GOOD + b"this is not json\n{unquoted: 1}\n", "lines not JSON"),
        "truncated.jsonl": (GOOD + b'{"messages": [{"role": "user", "content": "cut', "a cut line"),
        "scalars.jsonl": (GOOD + b'42\n"text"\nnull\ntrue\n[1, 2]\n', "lines that are no object"),
        "latin1.jsonl": (GOOD + '{"text": "café"}\n'.encode("latin-1"), "a latin-1 byte"),
        "nul_early.jsonl": (b'{"text": "a\x00b"}\n' + GOOD, "a NUL byte in the first line"),
        "nul_late.jsonl": (GOOD * 300 + b'{"text": "a\x00b"}\n' + GOOD, "a NUL after 8 KB"),
        "utf16_no_bom.jsonl": (GOOD.decode().encode("utf-16-le"), "UTF-16 without a BOM"),
        "utf16_bom.jsonl": (codecs.BOM_UTF16_LE + (GOOD + b"nope\n").decode().encode("utf-16-le"),
                            "UTF-16 with a BOM and one bad line"),
        "utf8_bom.jsonl": (codecs.BOM_UTF8 + GOOD + b"{\n", "a UTF-8 BOM and one bad line"),
        "image.jsonl": (png, "a PNG named .jsonl"),
        "archive.jsonl": (gzip.compress(GOOD), "a gzip file named .jsonl"),
        "random_bytes.jsonl": (bytes((i * 37 + 11) % 256 for i in range(4096)), "random bytes"),
        "huge_metadata.jsonl": (GOOD + _line({**_chat(2), "blob": "m" * 1_200_000}),
                                "a 1.2 MB metadata value"),
        "many_turns.jsonl": (GOOD + _line({"messages": turns}), "1,500 turns in one row"),
        "huge_content.jsonl": (GOOD + _line({"text": "c" * 1_100_000}), "1.1 M characters"),
        "big_integer.jsonl": (GOOD + b'{"text": "x", "n": 123456789012345678901234567890}\n',
                              "a 30-digit integer"),
        "deep_nesting.jsonl": (GOOD + nested, "arrays nested 5,000 deep"),
        "bad_role.jsonl": (GOOD + _line({"messages": [{"role": "robot", "content": "beep"},
                                                      {"role": "assistant", "content": "x"}]}),
                           "an unknown role"),
        "no_answer.jsonl": (GOOD + _line({"messages": [{"role": "user", "content": "hi"}]}),
                            "no assistant turn"),
        "content_types.jsonl": (GOOD + b"".join(_line({"messages": [
            {"role": "user", "content": c}, {"role": "assistant", "content": "x"}]})
            for c in (5, None, ["a"], {"b": 1})), "content that is no text"),
        "messages_not_list.jsonl": (GOOD + _line({"messages": "hello"}) +
                                    _line({"messages": {"role": "user"}}), "messages not a list"),
        "alpaca_missing.jsonl": (GOOD + _line({"instruction": "do it", "input": ""}),
                                 "Alpaca without output"),
        "unknown_shape.jsonl": (GOOD + _line({"foo": "bar", "baz": 1}), "no known fields"),
        "lone_surrogate.jsonl": (GOOD + b'{"text": "a\\ud800b"}\n', "an unpaired surrogate"),
        "nan.jsonl": (GOOD + b'{"text": NaN}\n{"text": Infinity}\n', "NaN and Infinity"),
        "metadata_array.jsonl": (GOOD + _line({**_chat(3), "metadata": [1, 2]}),
                                 "metadata that is an array"),
        "sharegpt_alien.jsonl": (GOOD + _line({"conversations": [{"from": "alien", "value": "x"}]}),
                                 "a ShareGPT speaker nobody knows"),
        "completion_number.jsonl": (GOOD + _line({"prompt": "p", "completion": 7}),
                                    "a number as completion"),
        "empty_text.jsonl": (GOOD + _line({"text": ""}) + _line({"text": "   "}), "empty text"),
        "crlf_broken.jsonl": (GOOD.replace(b"\n", b"\r\n") + b"{oops}\r\n", "CRLF and a bad line"),
        "broken_array.json": (b'[{"text": "a"}, {"text": "b"},', "a JSON array cut short"),
        "object.json": (b'{"text": "a single object, not a list"}', "an object, not a list"),
        "scalar.json": (b"42", "a number"),
        "array_items.json": (b'[{"text": "a"}, 5, "s", null, {"foo": 1}]', "items of any type"),
        "empty.csv": (b"", "an empty CSV"),
        "ragged.csv": (b"instruction,input,output\na,b,c\nd,e\nf,g,h,i,j\n", "ragged rows"),
        "open_quote.csv": (b'instruction,output\n"never closed,x\nq,a\n', "an open quote"),
        "latin1.csv": ("instruction,output\nq,a\nr,café\n".encode("latin-1"), "a latin-1 byte"),
        "columns.tsv": (b"alpha\tbeta\n1\t2\n", "columns no shape knows"),
        "corrupt.parquet": (b"PAR1" + b"\x00garbage" * 20 + b"PAR1", "a corrupt Parquet file"),
        "zero.parquet": (b"", "an empty Parquet file"),
        "nul.txt": (b"hello\x00world\n\nsecond block\n", "a NUL in text"),
        "data.xyz": (GOOD, "an unknown file extension"),
    }


def _eval_files() -> dict[str, tuple[bytes, str]]:
    """Return prediction files for eval-import."""
    return {
        "empty.jsonl": (b"", "an empty file"),
        "garbage.jsonl": (GOOD_PRED + b"not json\n", "a line not JSON"),
        "latin1.jsonl": (GOOD_PRED + '{"prompt": "café"}\n'.encode("latin-1"), "a latin-1 byte"),
        "missing_prediction.jsonl": (GOOD_PRED + _line({"prompt": "p", "reference": "r"}),
                                     "no prediction"),
        "prediction_number.jsonl": (GOOD_PRED + _line({**PRED, "prediction": 4}),
                                    "a number as prediction"),
        "scalars.jsonl": (GOOD_PRED + b"[1]\n7\nnull\n", "lines that are no object"),
        "nul.jsonl": (GOOD_PRED + b'{"prompt": "a\x00", "prediction": "b"}\n', "a NUL byte"),
        "image.jsonl": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "a PNG"),
        "header.csv": (b"question,answer\nq,a\n", "a header without the fields"),
        "latin1.csv": ("prompt,reference,prediction,model\np,r,q,m\np,r,é,m\n".encode("latin-1"),
                       "a latin-1 byte in one row"),
        "open_quote.csv": (b'prompt,reference,prediction,model\n"open,r,q,m\n', "an open quote"),
        "broken.json": (b'[{"prompt": "p", ', "a JSON array cut short"),
    }


def _label_files() -> dict[str, tuple[bytes, str]]:
    """Return label files (all or nothing: every one of these must be refused)."""
    good = _line({"row_key": 1, "label": "good"})
    return {
        "empty.jsonl": (b"", "no labels"),
        "not_json.jsonl": (good + b"bad, row 2\n", "a line not JSON"),
        "scalar.jsonl": (good + b"[1, 2]\n", "a line that is no object"),
        "bad_label.jsonl": (good + _line({"row_key": 2, "label": "meh"}), "an unknown label"),
        "label_list.jsonl": (good + _line({"row_key": 2, "label": ["good"]}), "a list as label"),
        "no_label.jsonl": (good + _line({"row_key": 2}), "no label"),
        "unknown_id.jsonl": (good + _line({"id": "ffff", "label": "bad"}), "an unknown id"),
        "row_key_text.jsonl": (good + _line({"row_key": "two", "label": "bad"}), "a text key"),
        "row_key_bool.jsonl": (good + _line({"row_key": True, "label": "bad"}), "a bool key"),
        "no_id.jsonl": (good + _line({"label": "bad"}), "neither id nor row_key"),
        "reason_number.jsonl": (good + _line({"row_key": 2, "label": "bad", "reason": 3}),
                                "a number as reason"),
        "latin1.jsonl": (good + '{"row_key": 2, "label": "bad", "reason": "é"}\n'
                         .encode("latin-1"), "a latin-1 byte"),
        "binary.jsonl": (b"\x7fELF" + bytes(range(200)), "a binary file"),
    }


def _config_files() -> dict[str, tuple[bytes, str]]:
    """Return training config files (every one of these must be refused before a run starts)."""
    def cfg(**values: object) -> bytes:
        return json.dumps(values).encode()

    return {
        "empty.json": (b"", "an empty file"),
        "not_json.json": (b"lr = 0.1\n", "not JSON"),
        "array.json": (b'[{"lr": 0.1}]', "an array, not an object"),
        "unknown_option.json": (cfg(learning_speed=3), "an option that does not exist"),
        "lr_text.json": (cfg(learning_rate="fast"), "text where a number goes"),
        "batch_negative.json": (cfg(batch_size=-4), "a negative batch size"),
        "rank_zero.json": (cfg(lora_r=0), "LoRA rank 0"),
        "max_steps_text.json": (cfg(max_steps="ten"), "text as max_steps"),
        "schedule_unknown.json": (cfg(lr_schedule="zigzag"), "an unknown schedule"),
        "latin1.json": ('{"model": "café"}'.encode("latin-1"), "a latin-1 byte"),
        "nested.json": (cfg(learning_rate={"value": 0.1}), "an object where a number goes"),
        "binary.json": (b"\x1f\x8b\x08\x00" + bytes(range(64)), "a gzip header"),
    }


_WRITERS: dict[Kind, Callable[[], dict[str, tuple[bytes, str]]]] = {
    "import": _import_files, "eval-import": _eval_files, "labels": _label_files,
    "config": _config_files}


def write_corpus(folder: Path) -> list[Case]:
    """Write every corpus file under ``folder`` (one subfolder per kind); return the cases."""
    cases = []
    for kind, files in _WRITERS.items():
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for name, (data, what) in files().items():
            path = folder / kind / name
            path.write_bytes(data)
            cases.append(Case(kind, path, what))
    empty_dir = folder / "import" / "empty_folder"  # a folder that holds no dataset
    empty_dir.mkdir(exist_ok=True)
    cases.append(Case("import", empty_dir, "a folder with no dataset"))
    return cases


if __name__ == "__main__":
    for case in write_corpus(Path(sys.argv[1])):
        print(f"{case.kind:12} {case.path}  ({case.what})")
