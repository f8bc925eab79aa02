"""AppTest: the Train page starts a tiny run, follows it to the end, and still shows it later."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

from pathlib import Path

import pytest
from helpers_app import APP, chat_file, open_on_empty_store, page_store
from helpers_app import page_ok as ok
from streamlit.testing.v1 import AppTest

from workbench import device, jobs, training
from workbench.store import Store

PAGE = "pages/train.py"


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Store:
    yield from page_store(tmp_path, monkeypatch, {"chats": chat_file(tmp_path / "c.jsonl", 8)})


def open_page() -> AppTest:
    at = ok(AppTest.from_file(str(APP), default_timeout=60).run())
    return ok(at.switch_page(PAGE).run())


def tiny_form(at: AppTest, **values) -> AppTest:
    """Fill the form for a short run of the tiny model (values override fields by key)."""
    at = ok(at.radio(key="tr_model").set_value("tiny").run())
    fields = {"tr_max_steps": 3, "tr_batch": 4, "tr_seq_len": 128, "tr_lr": 5e-3} | values
    for key, value in fields.items():
        at.number_input(key=key).set_value(value)
    return at


def test_page_without_dataset_says_what_to_do(tmp_path, monkeypatch):
    at = open_on_empty_store(tmp_path, monkeypatch, "pages/train.py")
    infos = [i.value for i in at.info]
    assert any("Import a dataset first" in i for i in infos)
    assert any("No training runs yet" in i for i in infos)


def test_invalid_config_names_the_field(store, tmp_path):
    at = tiny_form(open_page(), tr_alpha=0.0, tr_max_steps=-1)
    at = at.button(key="tr_start").click().run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error).replace("\\", "")  # md_escape'd
    assert "lora_alpha must be > 0" in errors and "max_steps" in errors
    assert not (tmp_path / "runs").exists()  # nothing started


def test_device_widgets_show_this_machine_and_refuse_qlora_without_cuda(store, tmp_path):
    at = open_page()
    chooser = at.selectbox(key="tr_device")
    assert chooser.value == "auto"
    assert chooser.options == [training.device_label(o) for o in device.device_options()]
    assert chooser.options[0] == f"auto: {device.describe(device.resolve_device())}"
    assert at.selectbox(key="tr_precision").value == "auto"
    assert at.selectbox(key="tr_checkpointing").value == "auto"
    qlora = at.checkbox(key="tr_qlora")
    if device.probe().gpus:
        pytest.skip("this machine has a GPU: QLoRA is offered")
    assert qlora.disabled and "needs a CUDA GPU" in qlora.help
    # a choice the machine cannot run is refused at start in one st.error, no traceback:
    # fp16 on the CPU, and QLoRA held over in the session (the GPU went away since)
    at = tiny_form(at)
    at.selectbox(key="tr_device").set_value("cpu")
    at.selectbox(key="tr_precision").set_value("fp16")
    at = at.button(key="tr_start").click().run()
    assert not at.exception
    assert "fp16 is not supported" in " ".join(e.value for e in at.error)
    at.selectbox(key="tr_precision").set_value("auto")
    at.session_state["tr_qlora"] = True
    at = at.button(key="tr_start").click().run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error).replace("\\", "")
    assert "QLoRA (4-bit base weights) needs a CUDA GPU" in errors
    assert not (tmp_path / "runs").exists()  # nothing started


def test_start_follow_and_reload_a_short_run(store, tmp_path):
    at = tiny_form(open_page())
    at.selectbox(key="tr_batching").set_value("packed")
    at.number_input(key="tr_wd").set_value(0.01)
    at = ok(at.button(key="tr_start").click().run())
    run_id = at.selectbox(key="tr_run").value
    assert any("Started training run" in s.value for s in at.success)
    done = jobs.wait(run_id, home=tmp_path / "runs", timeout=120)
    assert done.state == "done", done.error + jobs.log_tail(done.run_dir, 20)
    config = done.config["params"]["config"]  # every form option reaches the job
    assert config["batching"] == "packed" and config["weight_decay"] == 0.01
    assert (config["device"], config["precision"], config["qlora"]) == ("auto", "auto", False)
    assert config["gradient_checkpointing"] == "auto" and config["batch_tokens"] is None

    at = ok(at.run())
    table = at.dataframe[0].value  # the runs table
    assert table.iloc[0]["status"] == "done" and table.iloc[0]["step"] == "3/3"
    assert table.iloc[0]["data"] == "chats@1" and table.iloc[0]["model"] == "tiny"
    ran_on = device.describe(device.resolve_device())
    assert table.iloc[0]["device"].startswith(ran_on)
    assert any(c.value.startswith(f"Device: {ran_on}") for c in at.caption)
    assert len(at.get("plotly_chart")) == 1  # the loss curves
    assert [m.value for m in at.metric][0] == "3/3"
    assert any(t.value.endswith("adapter") for t in at.text)  # the adapter folder

    at = ok(at.text_area(key="tr_prompt").input("What does the cat find?").run())
    at = ok(at.button(key="tr_generate").click().run())
    assert {"base model", "base + adapter"} <= {c.value for c in at.caption}

    reloaded = open_page()  # a new session: the run comes back from its folder
    assert reloaded.selectbox(key="tr_run").value == run_id
    assert len(reloaded.get("plotly_chart")) == 1


def test_a_cancelled_run_offers_resume_and_finishes(store, tmp_path):
    run_dir = tmp_path / "runs" / "cancelled-run"
    run_dir.mkdir(parents=True)
    config = {"model": "tiny", "max_steps": 2, "batch_size": 4, "max_seq_len": 128}
    jobs._write_json(run_dir / "config.json", {
        "task": "workbench.train.train_task", "kind": "train", "created": 0.0,
        "params": {"store": str(store.path), "version_id": 1, "config": config}})
    jobs._write_json(run_dir / "status.json", {"state": "cancelled"})
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at = at.switch_page(PAGE).run()
    assert not at.exception and at.selectbox(key="tr_run").value == "cancelled-run"
    assert "cancelled" in at.error[0].value  # job_panel says how the run ended
    at = at.button(key="tr_resume").click().run()
    assert not at.exception, at.exception
    assert any("Resumed run cancelled" in s.value for s in at.success)
    done = jobs.wait("cancelled-run", home=tmp_path / "runs", timeout=120)
    assert done.state == "done", done.error + jobs.log_tail(run_dir, 20)
