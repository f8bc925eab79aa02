"""Clean: switch rules on, tune them, preview what they drop or change, apply as a version."""

from __future__ import annotations

import streamlit as st

from pages.common import curation_header, flash, show_error, store
from workbench import clean, curate
from workbench.exceptions import WorkbenchError

dataset, version_id, frame = curation_header(
    "Clean", " · rules run in the order listed; a row dropped by one rule is not checked by "
    "later ones")
ROLES = ["system", "user", "assistant"]


def roles(key: str, default: tuple) -> tuple:
    return tuple(st.multiselect("Roles checked", ROLES, list(default), key=f"{key}_roles"))


@st.cache_resource(show_spinner="Loading the default tokenizer…")
def tokenizer():
    return curate.default_token_counter()


def length_options(key: str, label: str, default: int, scope: str):
    a, b, c = st.columns(3)
    unit = a.radio("Unit", ["chars", "tokens"], key=f"{key}_unit", horizontal=True)
    limit = b.number_input(label, min_value=1, value=default, key=f"{key}_limit")
    scope = c.radio("Scope", ["turn", "conversation"], key=f"{key}_scope", horizontal=True,
                    index=["turn", "conversation"].index(scope))
    counter = tokenizer() if unit == "tokens" else None
    return dict(unit=unit, scope=scope, count_tokens=counter), limit


def rule(key: str, title: str, on: bool, build):
    """Show one rule's switch and options; return the rule when switched on."""
    enabled = st.checkbox(title, value=on, key=f"{key}_on")
    if not enabled:
        return None
    with st.expander(f"{title}: options"):
        return build(key)


def contamination(key: str):
    names = [n for n in store().datasets()["name"] if n != dataset]
    if not names:
        st.caption("No other dataset to compare against.")
        return None
    default = names.index("support-eval") if "support-eval" in names else 0
    name = st.selectbox("Evaluation dataset (its active version)", names, index=default,
                        key=f"{key}_eval")
    n = st.number_input("n-gram size", 4, 30, 13, key=f"{key}_n")
    texts, ids = curate.eval_texts(store(), store().active_version(name))  # eval prompts
    st.session_state["cl_eval_version"] = store().active_version(name)
    return clean.Contamination(eval_texts=texts, eval_ids=ids, n=n, roles=roles(key, ("user",)))


def rules_form() -> list:
    rules = [
        rule("cl_norm", "Unicode and whitespace normalisation (mojibake repair)", True,
             lambda k: clean.Normalize(form=st.radio("Unicode form", ["NFC", "NFKC", "none"],
                                                     key=f"{k}_form", horizontal=True),
                                       roles=roles(k, clean.ALL_ROLES))),
        rule("cl_pii", "PII: emails, phones, cards, IPs, secrets", True,
             lambda k: clean.PII(mode=st.radio("Action", ["redact", "drop"], key=f"{k}_mode",
                                               horizontal=True),
                                 kinds=tuple(st.multiselect("Kinds", clean.PII_KINDS,
                                                            list(clean.PII_KINDS),
                                                            key=f"{k}_kinds")),
                                 roles=roles(k, clean.ALL_ROLES))),
        rule("cl_ph", "Empty or placeholder responses", True,
             lambda k: clean.Placeholder(roles=roles(k, ("assistant",)))),
        rule("cl_short", "Too short", True, lambda k: _short(k)),
        rule("cl_long", "Too long", False, lambda k: _long(k)),
        rule("cl_lang", "Language not allowed", False,
             lambda k: clean.Language(allowed=tuple(st.multiselect(
                 "Allowed languages", list(clean.DEFAULT_CANDIDATES), ["en"], key=f"{k}_allowed")),
                 roles=roles(k, ("user", "assistant")))),
        rule("cl_ref", "Refusals and canned AI disclaimers", True,
             lambda k: clean.Refusal(roles=roles(k, ("assistant",)))),
        rule("cl_ctx", "Refers to content the row lacks (image, link, attachment)", True,
             lambda k: clean.MissingContext(roles=roles(k, ("user", "assistant")))),
        rule("cl_rep", "Repetition (Gopher line and n-gram fractions)", True,
             lambda k: clean.Repetition(min_words=st.number_input(
                 "Only check turns with at least this many words", 10, 500, 50, key=f"{k}_w"),
                 roles=roles(k, ("assistant",)))),
        rule("cl_trunc", "Cut off mid-sentence", True,
             lambda k: clean.Truncated(roles=roles(k, ("assistant",)))),
        rule("cl_cont", "Overlap with an evaluation set (n-gram contamination)", False,
             contamination),
    ]
    return [r for r in rules if r is not None]


def _short(key: str):
    kwargs, limit = length_options(key, "Minimum length", 2, "turn")
    return clean.TooShort(min_length=limit, roles=roles(key, ("assistant",)), **kwargs)


def _long(key: str):
    kwargs, limit = length_options(key, "Maximum length", 20_000, "conversation")
    return clean.TooLong(max_length=limit, roles=roles(key, clean.ALL_ROLES), **kwargs)


def show_preview(report) -> None:
    a, b, c = st.columns(3)
    a.metric("Rows", f"{report.total_rows:,}")
    b.metric("Rows dropped", f"{report.dropped_rows:,}")
    c.metric("Rows kept", f"{report.total_rows - report.dropped_rows:,}")
    st.dataframe(report.to_frame(), hide_index=True, key="cl_summary")
    for r in report.rules:
        if not r.rows:
            continue
        with st.expander(f"{r.name}: {r.rows:,} rows would be {r.action}d — samples"):
            for s in r.samples:
                st.caption(f"row {s['row_key']} · turn {s['turn']} · {s['detail']}")
                if r.action == "change":
                    before, after = st.columns(2)
                    before.text(str(s["before"])[:1500])  # text, never markdown
                    after.text(str(s["after"])[:1500])
                else:
                    st.text(str(s["before"])[:1500])


try:
    rules = rules_form()
except WorkbenchError as e:
    show_error(e)
    st.stop()
preview_col, apply_col = st.columns(2)
if preview_col.button("Preview", type="secondary", key="cl_preview", disabled=not rules):
    with st.spinner("Checking every row…"):
        st.session_state["cl_report"] = (version_id, curate.clean_preview(frame, rules))
report = st.session_state.get("cl_report")
if report and report[0] == version_id:
    show_preview(report[1])
if apply_col.button("Apply as a new version", type="primary", key="cl_apply", disabled=not rules):
    extra = {"eval_version": st.session_state.get("cl_eval_version")} \
        if any(r.name == "contamination" for r in rules) else {}
    try:
        with st.spinner("Applying…"):
            version = curate.apply_clean(store(), version_id, frame, rules, extra_params=extra)
    except WorkbenchError as e:
        show_error(e)
    else:
        st.session_state.pop("cl_report", None)
        flash(f"Cleaned into version v{version.version_id}: "
              f"{version.n_rows:,} rows kept, {len(frame) - version.n_rows:,} dropped "
              "(see them with their reasons under Datasets → History).")
        st.rerun()
