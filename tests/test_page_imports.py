"""Opening a page that only shows data imports no model library (torch alone takes 2-3 s).

Each page's first render runs in a fresh Python process: other tests in this process import
torch, so ``sys.modules`` here says nothing about what a page needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers_app import APP, ROOT, chat_file

HEAVY = ("torch", "transformers", "peft", "sentence_transformers")
PAGES = ("datasets", "clean", "dedup", "score", "label", "train", "evaluate", "errors", "loop")

# Opens app.py, then every page in turn, as one session; prints what each imported.
SCRIPT = """
import json, sys
from streamlit.runtime import pages_manager
from streamlit.testing.v1 import AppTest

original = pages_manager.PagesManager.__init__
def init(self, *args, **kwargs):  # rerun app.py as a live server does (helpers_app says why)
    original(self, *args, **kwargs)
    pages_manager.PagesManager.uses_pages_directory = False
pages_manager.PagesManager.__init__ = init

heavy, report = {heavy!r}, {{}}
at = AppTest.from_file({app!r}, default_timeout=120).run()
report["app"] = {{"imported": [m for m in heavy if m in sys.modules], "errors": []}}
for page in {pages!r}:
    at = at.switch_page(f"pages/{{page}}.py").run()
    report[page] = {{"imported": [m for m in heavy if m in sys.modules],
                     "errors": [str(e.value) for e in [*at.exception, *at.error]]}}
print(json.dumps(report))
"""


def test_opening_each_page_imports_no_model_library(tmp_path: Path):
    from workbench.store import Store

    store = tmp_path / "store.duckdb"
    Store(store).import_file(chat_file(tmp_path / "chats.jsonl", 8), "chats")
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_EMBED_BACKEND"}  # the app's
    env |= {"WORKBENCH_STORE": str(store), "WORKBENCH_HOME": str(tmp_path),
            "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])}
    script = SCRIPT.format(heavy=HEAVY, app=str(APP), pages=PAGES)
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(report) == ["app", *PAGES]
    for page, seen in report.items():
        assert seen["errors"] == [], (page, seen["errors"])
        assert seen["imported"] == [], f"opening {page} imported {seen['imported']}"
