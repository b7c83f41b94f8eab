#!/usr/bin/env python3
"""Run the classifier over a labelled JSON-lines set and score it with the shared scorer.

    .venv/bin/python bench/eval_intents.py [LABELS.jsonl] [--scorer PATH] [--out PRED.jsonl] [-- scorer args]

Exists so the classifier's figures can be measured (never trained on: the dev set is
for measuring only) before and independently of the ``privbot classify`` command.
Predictions are written in exactly the format that command writes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from privbot.classify import Classifier  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("labels", nargs="?", default="/work/shared/eval/intents-dev.jsonl")
    ap.add_argument("--scorer", default="/work/shared/eval/score_intents.py")
    ap.add_argument("--out", default="")
    ap.add_argument("--intents-dir", default="")
    ap.add_argument("--errors", default="15")
    a, extra = ap.parse_known_args()

    rows = [json.loads(line) for line in open(a.labels, encoding="utf-8") if line.strip()]
    t0 = time.perf_counter()
    clf = Classifier.load(Path(a.intents_dir) if a.intents_dir else None)
    ready = time.perf_counter() - t0
    t1 = time.perf_counter()
    results = clf.classify_many([(r.get("body", ""), r.get("subject", ""), r.get("channel", "email")) for r in rows])
    took = time.perf_counter() - t1
    out = Path(a.out) if a.out else Path(tempfile.mkstemp(suffix=".jsonl")[1])
    with out.open("w", encoding="utf-8") as f:
        for r, c in zip(rows, results):
            f.write(json.dumps({"id": r["id"], **c.to_json()}, ensure_ascii=False) + "\n")
    print(f"model ready in {ready:.2f}s; classified {len(rows)} messages in {took:.3f}s", file=sys.stderr)
    return subprocess.call([sys.executable, a.scorer, a.labels, str(out), "--errors", a.errors, *extra])


if __name__ == "__main__":
    sys.exit(main())
