"""Train: a LoRA adapter on a dataset version as a background job, live curves, a playground."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from pages.common import (
    current_dataset,
    flash,
    job_panel,
    show_error,
    show_flash,
    store,
    tracking_toggle,
)
from workbench import training
from workbench.exceptions import WorkbenchError
from workbench.models import test_models_offered
from workbench.train import TrainConfig
from workbench.views import md_escape

MODELS = {"default": "default (SmolLM2-135M)", "tiny": "tiny (random weights, for tests)",
          "path": "a local model folder"}
if not test_models_offered():  # it answers noise: not for people
    MODELS.pop("tiny")
VALIDATION = {"split": "a seeded split of the training rows", "version": "another version",
              "none": "none"}

st.title("Train")
show_flash()


def data_section() -> tuple[int, int | None, float] | None:
    """Return (training version, validation version or None, validation fraction)."""
    dataset = current_dataset()
    if dataset is None:
        st.info("Import a dataset first (Datasets page) to start a training run.")
        return None
    labels = training.version_choices(store())
    own = [v.version_id for v in store().versions(dataset)]
    active = store().active_version(dataset)
    left, right = st.columns(2)
    version = left.selectbox("Training data", own, index=own.index(active), key="tr_version",
                             format_func=lambda v: labels[v] + (" (active)" if v == active else ""))
    mode = right.radio("Validation", list(VALIDATION), format_func=VALIDATION.get,
                       horizontal=True, key="tr_val_mode")
    if mode == "split":
        return version, None, right.slider("Held-out fraction", 0.05, 0.45, 0.1, 0.05,
                                           key="tr_val_fraction")
    others = [v for v in labels if v != version]
    if mode == "version" and others:
        return version, right.selectbox("Validation version", others, format_func=labels.get,
                                        key="tr_val_version"), 0.0
    if mode == "version":
        right.caption("No other version exists: validation is off.")
    return version, None, 0.0


def model_section() -> str:
    """Return the base model: "default", "tiny" or a local folder path."""
    choice = st.radio("Base model", list(MODELS), format_func=MODELS.get, horizontal=True,
                      key="tr_model")
    if choice != "path":
        return choice
    return st.text_input("Model folder (safetensors, config.json, tokenizer)",
                         key="tr_model_path").strip()


def device_section() -> dict:
    """Show where the run computes: device, precision, QLoRA, gradient checkpointing."""
    options = training.device_options()
    a, b, c, d = st.columns(4)
    chosen = a.selectbox("Device", options, key="tr_device", format_func=training.device_label,
                         help="auto picks CUDA, else Apple MPS, else the CPU.")
    refusal = training.qlora_refusal(chosen)
    return {
        "device": chosen,
        "precision": b.selectbox(
            "Precision", ["auto", "bf16", "fp16", "fp32"], key="tr_precision",
            help="auto: bf16 on a GPU that has it, fp16 (loss-scaled) on older GPUs, fp32 on "
                 "the CPU."),
        "gradient_checkpointing": c.selectbox(
            "Gradient checkpointing", ["auto", "on", "off"], key="tr_checkpointing",
            help="Recomputes activations to save GPU memory (~30% slower). auto: off on the "
                 "CPU, on for QLoRA or a base that fills the GPU."),
        "qlora": d.checkbox("QLoRA (4-bit base)", key="tr_qlora", disabled=refusal is not None,
                            help=refusal or "Loads the base in 4-bit NF4 and trains LoRA on top."),
    }


def config_form(model: str, val_fraction: float) -> dict | None:
    """Show the LoRA and optimizer options; return their values when Start is pressed."""
    targets = training.default_targets(model) if model else []
    d = TrainConfig.__dataclass_fields__
    with st.form("tr_form"):
        a, b, c, e = st.columns(4)
        values = {
            "lora_r": a.number_input("LoRA rank (r)", value=d["lora_r"].default, step=1,
                                     key="tr_r"),
            "lora_alpha": b.number_input("LoRA alpha", value=d["lora_alpha"].default,
                                         key="tr_alpha"),
            "lora_dropout": c.number_input("LoRA dropout", value=d["lora_dropout"].default,
                                           step=0.01, key="tr_dropout"),
            "target_modules": e.text_input(
                "Target modules", key="tr_targets",
                placeholder=", ".join(targets) or "every linear layer",
                help="Comma-separated module names; empty = the architecture's default."),
            "learning_rate": a.number_input("Learning rate", value=d["learning_rate"].default,
                                            step=1e-5, format="%.1e", key="tr_lr"),
            "lr_schedule": b.selectbox("Schedule", ["cosine", "linear", "constant"],
                                       key="tr_schedule"),
            "warmup_ratio": c.number_input("Warmup ratio", value=d["warmup_ratio"].default,
                                           step=0.01, key="tr_warmup"),
            "seed": e.number_input("Seed", value=0, step=1, key="tr_seed"),
            "epochs": a.number_input("Epochs", value=1.0, step=0.5, key="tr_epochs"),
            "max_steps": b.number_input("Max steps (0 = by epochs)", value=0, step=1,
                                        key="tr_max_steps"),
            "batch_size": c.number_input("Batch size", value=d["batch_size"].default, step=1,
                                         key="tr_batch"),
            "grad_accum": e.number_input("Gradient accumulation", value=1, step=1,
                                         key="tr_accum"),
            "max_seq_len": a.number_input("Max sequence length", value=512, step=64,
                                          key="tr_seq_len"),
            "batching": b.selectbox(
                "Batching", ["grouped", "packed"], key="tr_batching",
                help="grouped: rows of similar length share a batch; packed: rows are packed "
                     "into full blocks that never attend to each other (least padding)."),
            "weight_decay": c.number_input("Weight decay", value=d["weight_decay"].default,
                                           step=0.01, key="tr_wd"),
            "eval_every": e.number_input("Validate every N steps (0 = start and end)",
                                         value=d["eval_every"].default, step=1, key="tr_eval"),
            "checkpoint_every": a.number_input("Checkpoint every N steps",
                                               value=d["checkpoint_every"].default, step=1,
                                               key="tr_ckpt"),
            "batch_tokens": b.number_input(
                "Batch tokens (0 = rows only)", value=0, step=256, key="tr_batch_tokens",
                help="Also caps a micro-batch's padded tokens (rows x longest row)."),
        }
        started = st.form_submit_button("Start training", type="primary", key="tr_start",
                                        icon=":material/play_arrow:")
    return {**values, "model": model, "val_fraction": val_fraction} if started else None


def new_run_section() -> None:
    data = data_section()
    if data is None:
        return
    version, val_version, val_fraction = data
    tracking_toggle("tr_mlflow")
    model = model_section()
    where = device_section()
    values = config_form(model, val_fraction)
    if values is None:
        return
    values |= where | {"batch_tokens": values["batch_tokens"] or None}
    try:
        job = training.start_run(store(), version, training.build_config(values),
                                 val_version_id=val_version)
    except WorkbenchError as e:
        show_error(e)
        return
    st.session_state["tr_run"] = job.run_id
    st.query_params["run"] = job.run_id
    flash(f"Started training run {job.run_id}.")
    st.rerun()


def pick_run(table) -> str:
    """Show the run picker (it defaults to ?run= of the address, else the newest run); a run
    whose folder is gone stays in the table below but cannot be opened."""
    ids = table.loc[table["status"] != "missing", "run_id"].tolist()
    # No state in the label: the panel below shows it live, a label would go stale.
    labels = {row.run_id: f"{row.run_id} · {row.data} · {row.model}"
              + (f" · retrained by loop {row.part_of}" if row.part_of else "")
              for row in table.itertuples()}
    if st.session_state.get("tr_run") not in ids:
        wanted = st.query_params.get("run")
        st.session_state["tr_run"] = wanted if wanted in ids else ids[0]
    run_id = st.selectbox("Run", ids, format_func=labels.get, key="tr_run")
    st.query_params["run"] = run_id
    return run_id


def live_section(run_id: str) -> None:
    """Show step, losses, tokens/s and the loss curves; refresh while the run is active."""

    @st.fragment(run_every=2.0 if training.get_run(run_id).active else None)
    def live() -> None:
        job = training.get_run(run_id)
        m = training.live_metrics(job)
        cols = st.columns(4)
        cols[0].metric("Step", f"{job.step}/{job.total or '?'}")
        cols[1].metric("Train loss", _num(m["loss"], ".4f"))
        cols[2].metric("Validation loss", _num(m["val_loss"], ".4f"))
        cols[3].metric("Tokens/s", _num(m["tokens_per_s"], ",.0f"))
        curves = training.loss_frame(job)
        if curves.empty:
            st.caption("The loss curves appear after the first step.")
            return
        fig = px.line(curves, x="step", y="loss", color="split", markers=True,
                      title="Loss per step")
        st.plotly_chart(fig, key="tr_curve")

    live()


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def run_view(run_id: str, device_name: str) -> None:
    job = training.get_run(run_id)
    job_panel(run_id, key="tr_job")
    if device_name:
        st.caption(f"Device: {device_name}")
    live_section(run_id)
    with st.expander("Config"):
        st.json(job.config["params"].get("config") or {})
    if job.state in ("failed", "cancelled") and st.button(
            "Resume from the last checkpoint", key="tr_resume", icon=":material/replay:"):
        try:
            training.resume_run(run_id)
        except WorkbenchError as e:
            show_error(e)
            return
        flash(f"Resumed run {run_id}.")
        st.rerun()
    if job.state == "done":
        finished_section(job)


def finished_section(job) -> None:
    st.subheader("Adapter")
    st.text(str(training.adapter_dir(job)))
    out = st.text_input("Export folder for the merged model", key=f"tr_out_{job.run_id}",
                        value=str(training.default_export_dir(job)))
    if st.button("Merge and export", key="tr_merge", icon=":material/merge:"):
        try:
            with st.spinner("Merging the adapter into the base model…"):
                path = training.merge_run(job.run_id, out)
            st.success(f"Merged model written to {md_escape(path)}")
        except WorkbenchError as e:
            show_error(e)
    playground(job.run_id)


def playground(run_id: str) -> None:
    st.subheader("Playground")
    prompt = st.text_area("Prompt", key="tr_prompt")
    tokens = st.slider("Max new tokens", 8, 256, 64, 8, key="tr_tokens")
    if st.button("Generate with both models", key="tr_generate"):
        try:
            with st.spinner("Generating (greedy)…"):
                replies = training.compare(run_id, prompt, max_new_tokens=tokens)
            st.session_state["tr_play"] = (run_id, prompt, *replies)
        except WorkbenchError as e:
            show_error(e)
    shown = st.session_state.get("tr_play")
    if shown and shown[0] == run_id:
        left, right = st.columns(2)
        left.caption("base model")
        left.text(shown[2])  # model output stays text
        right.caption("base + adapter")
        right.text(shown[3])


try:
    table = training.runs_table(store())
except WorkbenchError as e:
    show_error(e)
    st.stop()
with st.expander("New training run", expanded=table.empty):
    new_run_section()
if (table["status"] == "missing").all():
    st.info("No training runs yet: start one above.")
    st.stop()
st.subheader("Run")
try:
    picked = pick_run(table)
    run_view(picked, table.set_index("run_id")["device"].get(picked, ""))
except WorkbenchError as e:
    show_error(e)
st.subheader("All runs")


@st.fragment(run_every=2.0 if training.any_active(table) else None)
def all_runs() -> None:
    """The runs table, refreshed with the progress bars while a run is active."""
    st.dataframe(training.runs_table(store()), hide_index=True,
                 key="tr_runs", column_config={"run_id": st.column_config.TextColumn(
                     width="medium")})


all_runs()
