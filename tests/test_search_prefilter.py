"""Text search screens rows with a case-insensitive regex before ILIKE decides: the screen
never loses a row that ILIKE alone finds (all code points, and tricky terms on a store)."""

from __future__ import annotations

import duckdb
import numpy as np
import orjson
import pytest

from workbench.schema import Example
from workbench.store import RowFilter, Store, _like_pattern, _search_regex


def test_regex_case_folding_covers_duckdbs_lower_on_every_code_point():
    # ILIKE equates two characters when DuckDB's lower() gives the same one; the regex screen
    # must match each as the other, or a row ILIKE finds would be screened out.
    con = duckdb.connect()
    assert con.execute("""SELECT count(*) FROM range(1, 1114112) t(i)
        WHERE (i < 55296 OR i > 57343) AND length(lower(chr(i::INTEGER))) <> 1""").fetchone() \
        == (0,)
    pairs = con.execute("""
        WITH low AS (SELECT chr(i::INTEGER) AS c, lower(chr(i::INTEGER)) AS l
                     FROM range(1, 1114112) t(i) WHERE i < 55296 OR i > 57343)
        SELECT a.c, b.c FROM low a JOIN low b ON a.l = b.l AND a.c <> b.c""").fetchall()
    assert len(pairs) > 2000  # the Latin, Greek, Cyrillic, ... case pairs
    texts = [x for x, _ in pairs]
    patterns = [_search_regex(y)[4:] for _, y in pairs]  # without (?i): added below
    missed = con.execute("""SELECT count(*) FROM (SELECT unnest(?) AS x, unnest(?) AS p)
        WHERE NOT regexp_matches(x, '(?i)^' || p || '$')""", [texts, patterns]).fetchone()[0]
    assert missed == 0


TEXTS = ["İstanbul is big", "istanbul ISTANBUL", "100% sure", "a_b and a.b", 'say "hi"',
         "back\\slash", "line one\nline two", "emoji 🙂 here", "Straße STRASSE", "Kelvin K",
         "price $5 (approx.) [x] {y} ^z|w*+?", "tab\there", "plain words only"]
TERMS = ["istanbul", "İSTANBUL", "I", "100%", "%", "_", "a_b", "a.b", '"hi"', "\\", "e\nl",
         "🙂", "straße", "STRASSE", "k", "$5 (approx.)", "[x] {y} ^z|w*+?", "b\th", "nothing",
         "plain words", "source", "Source: W"]


@pytest.fixture
def store() -> Store:
    s = Store(":memory:")
    rows = [Example(({"role": "user", "content": f"question {i}"},
                     {"role": "assistant", "content": t}), {"source": f"Source: W{i} {t}"})
            for i, t in enumerate(TEXTS)]
    s.add_examples("tricky", rows)
    return s


def ilike_only(store: Store, vid: int, term: str) -> list[int]:
    """The rows ILIKE alone finds (each turn, the note, each user metadata value)."""
    jterm = orjson.dumps(term).decode()[1:-1]
    pat, jpat = _like_pattern(term), _like_pattern(jterm)
    with store.connect() as con:
        return con.execute(r"""SELECT vr.row_key FROM version_rows vr JOIN rows r USING (row_key)
            WHERE vr.version_id = ? AND (list_bool_or(list_transform(
                json_extract_string(r.messages, '$[*].content'), lambda c: c ILIKE ? ESCAPE '\'))
              OR r.note ILIKE ? ESCAPE '\' OR list_bool_or(list_transform(
                list_zip(json_keys(r.metadata), json_extract_string(r.metadata, '$.*')),
                lambda kv: NOT starts_with(kv[1], '_') AND (kv[2] ILIKE ? ESCAPE '\'
                                                       OR kv[2] ILIKE ? ESCAPE '\'))))
            ORDER BY vr.pos""", [vid, pat, pat, pat, jpat]).fetchnumpy()["row_key"].tolist()


@pytest.mark.parametrize("term", TERMS)
def test_search_finds_what_ilike_alone_finds(store, term):
    vid = store.active_version("tricky")
    found = store.matches(vid, RowFilter(search=term)).tolist()
    assert found == ilike_only(store, vid, term)
    assert store.page(vid, filters=RowFilter(search=term), limit=100).total == len(found)


def test_the_screen_keeps_the_rows_it_should(store):
    vid = store.active_version("tricky")
    keys = store.frame(vid)["row_key"].to_numpy()
    assert np.array_equal(store.matches(vid, RowFilter(search="İSTANBUL")), keys[:2])
    assert np.array_equal(store.matches(vid, RowFilter(search="100%")), keys[2:3])
    assert store.matches(vid, RowFilter(search="W2 100%")).size == 1  # a metadata value
