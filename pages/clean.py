"""Clean: switch rules on, tune them, preview what they drop, flag or change, apply as a version.

A rule either drops the rows it hits or flags them for review (they stay, listed with the rule
and fed to the Label page's queue); each rule starts in the mode its measured precision on
real cleaning labels earns. With labels, the preview shows each rule's precision on them.
"""

from __future__ import annotations

import streamlit as st

from pages.common import (
    curation_title,
    engine_setting,
    finished_job,
    flash,
    job_panel,
    session_cached,
    show_error,
    store,
)
from workbench import clean, curate, labelling
from workbench.exceptions import WorkbenchError
from workbench.views import md_escape

dataset, version_id, n_rows = curation_title(
    "Clean", " · rules run in the order listed; a row dropped by one rule is not checked by "
    "later ones")
ROLES = ["system", "user", "assistant"]
DEFAULTS = {r.name: r for r in clean.default_rules()}
VERBS = {"drop": "dropped", "flag": "flagged for review", "change": "changed"}


def roles(key: str, default: tuple) -> tuple:
    return tuple(st.multiselect("Roles checked", ROLES, list(default), key=f"{key}_roles"))


def mode(key: str, name: str) -> str:
    """A drop/flag switch that starts where the shared default set has the rule."""
    start = DEFAULTS[name].mode if name in DEFAULTS else "drop"
    return st.radio("When it hits a row", ["drop", "flag"], index=["drop", "flag"].index(start),
                    key=f"{key}_mode", horizontal=True,
                    format_func=lambda m: {"drop": "drop it",
                                           "flag": "keep it, flagged for review"}[m])


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


def rule(key: str, name: str, title: str, build):
    """Show one rule's switch and options; return the rule when switched on."""
    enabled = st.checkbox(f"{title} · {DEFAULTS[name].action if name in DEFAULTS else 'off'} "
                          "by default", value=name in DEFAULTS, key=f"{key}_on")
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
    return clean.Contamination(eval_texts=texts, eval_ids=ids, n=n, roles=roles(key, ("user",)),
                               mode=mode(key, "contamination"))


def rules_form() -> list:
    rules = [
        rule("cl_norm", "normalize", "Unicode and whitespace normalisation (mojibake repair)",
             lambda k: clean.Normalize(form=st.radio("Unicode form", ["NFC", "NFKC", "none"],
                                                     key=f"{k}_form", horizontal=True),
                                       roles=roles(k, clean.ALL_ROLES))),
        rule("cl_pii", "pii", "PII: emails, phones, cards, IPs, secrets",
             lambda k: clean.PII(mode=st.radio("Action", ["redact", "drop", "flag"],
                                               key=f"{k}_mode", horizontal=True),
                                 kinds=tuple(st.multiselect("Kinds", clean.PII_KINDS,
                                                            list(clean.PII_KINDS),
                                                            key=f"{k}_kinds")),
                                 roles=roles(k, clean.ALL_ROLES))),
        rule("cl_ph", "placeholder", "Empty or placeholder responses",
             lambda k: clean.Placeholder(roles=roles(k, ("assistant",)),
                                         mode=mode(k, "placeholder"))),
        rule("cl_phin", "placeholder_input", "Placeholder input ('No input', 'N/A')",
             lambda k: clean.PlaceholderInput(mode=mode(k, "placeholder_input"))),
        rule("cl_url", "url_input", "Input that is only a link",
             lambda k: clean.UrlInput(mode=mode(k, "url_input"))),
        rule("cl_short", "too_short", "Too short", lambda k: _short(k)),
        rule("cl_long", "too_long", "Too long", lambda k: _long(k)),
        rule("cl_lang", "language", "Language not allowed",
             lambda k: clean.Language(allowed=tuple(st.multiselect(
                 "Allowed languages", list(clean.DEFAULT_CANDIDATES), ["en"], key=f"{k}_allowed")),
                 roles=roles(k, ("user", "assistant")), mode=mode(k, "language"))),
        rule("cl_ref", "refusal", "Refusals and canned AI disclaimers",
             lambda k: clean.Refusal(roles=roles(k, ("assistant",)), mode=mode(k, "refusal"))),
        rule("cl_ctx", "missing_context",
             "Refers to content the row lacks (image, link, attachment)",
             lambda k: clean.MissingContext(roles=roles(k, ("user", "assistant")),
                                            mode=mode(k, "missing_context"))),
        rule("cl_rep", "repetition", "Repetition (repeated lines, paragraphs, n-grams)",
             lambda k: clean.Repetition(min_words=st.number_input(
                 "Only check turns with at least this many words", 10, 500, 50, key=f"{k}_w"),
                 roles=roles(k, ("assistant",)), mode=mode(k, "repetition"))),
        rule("cl_trunc", "truncated", "Cut off mid-sentence",
             lambda k: clean.Truncated(roles=roles(k, ("assistant",)), mode=mode(k, "truncated"))),
        rule("cl_cont", "contamination", "Overlap with an evaluation set (n-gram contamination)",
             contamination),
    ]
    return [r for r in rules if r is not None]


def _short(key: str):
    kwargs, limit = length_options(key, "Minimum length", 2, "turn")
    return clean.TooShort(min_length=limit, roles=roles(key, ("assistant",)),
                          mode=mode(key, "too_short"), **kwargs)


def _long(key: str):
    kwargs, limit = length_options(key, "Maximum length", 20_000, "conversation")
    return clean.TooLong(max_length=limit, roles=roles(key, clean.ALL_ROLES),
                         mode=mode(key, "too_long"), **kwargs)


def show_preview(report, hits) -> None:
    """Show a preview; ``hits``: row_key and id of the rows its rules hit (for their labels)."""
    a, b, c, d = st.columns(4)
    a.metric("Rows", f"{report.total_rows:,}")
    b.metric("Rows dropped", f"{report.dropped_rows:,}")
    c.metric("Rows flagged for review", f"{report.flagged_rows:,}")
    d.metric("Rows kept", f"{report.total_rows - report.dropped_rows:,}")
    table = labelling.rule_table(store(), hits, report)
    labelled = int(table["labelled_bad"].sum() + table["labelled_good"].sum())
    if labelled:
        st.caption("With your labels: of the labelled rows each rule hits, how many you marked "
                   "bad (precision, 95% Wilson interval). A drop rule with low precision throws "
                   "good rows away: switch it to flag.")
        st.dataframe(table, hide_index=True, key="cl_summary", column_config={
            "precision": st.column_config.NumberColumn(format="%.2f"),
            "low": st.column_config.NumberColumn("95% CI low", format="%.2f"),
            "high": st.column_config.NumberColumn("95% CI high", format="%.2f")})
    else:
        st.dataframe(report.to_frame(), hide_index=True, key="cl_summary")
        st.caption("Label rows (Label page) to see each rule's precision on your own data.")
    for r in report.rules:
        if not r.rows:
            continue
        with st.expander(f"{r.name}: {r.rows:,} rows would be {VERBS[r.action]} — samples"):
            for s in r.samples:
                st.caption(f"row {s['row_key']} · turn {s['turn']} · {md_escape(s['detail'])}")
                if r.action == "change":
                    before, after = st.columns(2)
                    before.text(str(s["before"])[:1500])  # text, never markdown
                    after.text(str(s["after"])[:1500])
                else:
                    st.text(str(s["before"])[:1500])


def flagged_section() -> None:
    """Rows flagged for review in this version: per rule, label them or drop them at once."""
    summary = store().flagged_summary(version_id)
    if summary.empty:
        return
    st.subheader(f"Flagged for review ({store().flagged_count(version_id):,} rows)")
    st.page_link("pages/label.py", label="Review them one at a time in the queue",
                 icon=":material/thumbs_up_down:")
    st.dataframe(summary, hide_index=True, key="cl_flag_summary")
    reason = st.selectbox("Rule", summary["reason"].tolist(), key="cl_flag_rule")
    keep_good = st.checkbox("Keep the rows you labelled good", value=True, key="cl_flag_keep")
    keys = labelling.flagged_to_drop(store(), version_id, reason,
                                     keep_good=keep_good)["row_key"].tolist()
    if st.button(f"Drop {len(keys):,} rows flagged by {reason}", key="cl_flag_drop",
                 disabled=not keys):
        version = labelling.drop_flagged(store(), version_id, reason, keep_good=keep_good)
        flash(f"Dropped {len(keys):,} reviewed rows into {version.ref}.")
        st.rerun()


st.page_link("pages/label.py", label="Label rows in the review queue: each rule's precision "
             "on your labels then shows in the preview", icon=":material/thumbs_up_down:")
try:
    rules = rules_form()
except WorkbenchError as e:
    show_error(e)
    st.stop()
engine = engine_setting("cl_engine", n_rows, "clean")
eval_version = st.session_state.get("cl_eval_version") \
    if any(r.name == "contamination" for r in rules) else None


def applied_notice() -> None:
    """While an Apply job runs, show it; once it ends, say what it made (once)."""
    job = finished_job("cl_applying", st.session_state.get("cl_applying"), key="cl_job")
    if job is None:
        return
    version, rows = store().version(int(job.result["version_id"])), int(job.result["rows"])
    flagged = sum(v for k, v in version.counts.items() if k.startswith("flagged:"))
    flash(f"Cleaned into {version.ref}: {version.n_rows:,} rows kept, "
          f"{rows - version.n_rows:,} dropped, {flagged:,} flags for review "
          "(dropped rows with their reasons are under Datasets → History).")
    st.rerun()


def start(apply: bool = False, from_run: str = ""):
    try:
        return curate.start_clean(store(), version_id, rules, eval_version=eval_version,
                                  engine=engine, apply=apply, from_run=from_run)
    except WorkbenchError as e:
        show_error(e)


applied_notice()
preview_col, apply_col = st.columns(2)
if preview_col.button("Preview", type="secondary", key="cl_preview", disabled=not rules,
                      help="Runs the rules as a background job: it survives a page reload"):
    start()
started = curate.clean_jobs(store(), version_id)
done = next((j for j in started if j.state == "done" and not j.config["params"].get("apply")),
            None)
if started and started[0] is not done and not started[0].config["params"].get("apply"):
    job_panel(started[0].run_id, key=f"cl_job_{started[0].run_id}")  # running, failed, cancelled
fresh = done is not None and curate.job_matches(done, rules, eval_version)
report = None
if done is not None:
    try:  # the preview alone: the page never reads the version's rows
        report = session_cached("cl_preview", (done.run_id,),
                                lambda: curate.clean_job_preview(done), keep=1)
    except WorkbenchError as e:
        show_error(e)
        fresh = False
if report is not None:
    if not fresh:
        st.warning("The rules changed since this preview: preview again to see their effect.",
                   icon=":material/warning:")
    show_preview(*report)
if apply_col.button("Apply as a new version", type="primary", key="cl_apply", disabled=not rules,
                    help="Saves the preview above as it is" if fresh else
                    "Runs the rules as a background job, then saves the new version"):
    # A job either way, so the app process never holds the new version's rows: it saves the
    # fresh preview of these same rules as it is, or runs the rules first.
    job = start(apply=True, from_run=done.run_id if fresh else "")
    if job is not None:
        st.session_state["cl_applying"] = job.run_id
        st.rerun()
flagged_section()
