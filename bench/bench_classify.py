#!/usr/bin/env python3
"""Benchmark the intent classifier: batch throughput on one core, and time to a ready model.

    .venv/bin/python bench/bench_classify.py [RESULT.json] [--messages PATH] [--repeat N]

Why: the classifier is trained when privbot starts, so start-up time is part of the
product; and a mailbox backlog is classified in batches, so throughput matters too.
"Cold" trains from intents/ with an empty cache; "warm" loads the cached model.
Each ready time is measured in a fresh process, as a real start would be.
"""

from __future__ import annotations

import os

# One core: BLAS and OpenMP must not fan out (set before numpy is imported).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

_READY = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, {src!r})
from pathlib import Path
from privbot.classify import Classifier
c = Classifier.load(cache_dir=Path({cache!r}))
c.classify("please close my account")
print(time.perf_counter() - t0)
"""


def ready_time(cache_dir: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _READY.format(src=str(ROOT / "src"), cache=cache_dir)],
        capture_output=True, text=True, check=True, env=os.environ.copy(),
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("json_out", nargs="?", default="")
    ap.add_argument("--messages", default="/work/shared/eval/intents-dev.jsonl",
                    help="JSON lines with subject/body/channel, used only as realistic input")
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args()
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # really one core
    except (AttributeError, OSError):
        pass

    with tempfile.TemporaryDirectory() as cache:
        cold = ready_time(cache)  # empty cache: trains and writes it
        warm = ready_time(cache)  # cache present: loads it

    from privbot.classify import Classifier

    clf = Classifier.load()
    if Path(a.messages).exists():
        rows = [json.loads(x) for x in open(a.messages, encoding="utf-8") if x.strip()]
        items = [(r.get("body", ""), r.get("subject", ""), r.get("channel", "email")) for r in rows]
    else:
        items = [("Please close my account and erase everything.", "", "email")] * 200
    batch = items * a.repeat
    clf.classify_many(items[:20])  # warm caches
    t0 = time.perf_counter()
    clf.classify_many(batch)
    took = time.perf_counter() - t0
    rate = len(batch) / took
    t0 = time.perf_counter()
    for text, subject, channel in items:
        clf.classify(text, subject, channel)
    single_ms = (time.perf_counter() - t0) / len(items) * 1000

    result = {
        "throughput_msg_per_s": round(rate, 1),
        "batch_size": len(batch),
        "single_message_ms": round(single_ms, 2),
        "ready_cold_s": round(cold, 3),
        "ready_warm_s": round(warm, 3),
        "cpus_visible": os.cpu_count(),
    }
    print(f"throughput: {rate:.0f} msg/s (batch of {len(batch)}, one core)")
    print(f"single message: {single_ms:.2f} ms")
    print(f"ready, cold (train from intents/): {cold:.2f} s")
    print(f"ready, warm (cached model): {warm:.2f} s")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
