#!/usr/bin/env python3
"""`modelwatch score` against the Python drift tools on the same frames.

Generates numeric frames (reference of 1k, 10k and 50k rows x 50 features;
current data of 1 and 10 windows of 5,000 rows, the last features shifted),
writes them as modelwatch NDJSON, and times in the same run:

- `modelwatch score` as a user runs it: the whole process, reading and
  decoding the files included;
- NannyML's UnivariateDriftCalculator (KS, chunks of 5,000), fit + calculate;
- Evidently's DataDriftPreset, one report per window.

The Python tools are timed inside the process on DataFrames already in
memory (imports and file reading excluded), which favours them. A tool that
is not importable is skipped and said so. Prints one row per case with the
ratios; `--markdown` prints the table for daemon/docs/benchmarks.md.

Usage: score_anchors.py --modelwatch target/release/modelwatch [--sizes 1000,10000,50000]
(daemon/benches/anchors/run.sh builds the binary and the virtual environment).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

FEATURES = 50
WINDOW = 5000
SHIFTED = 5


def frames(rows, windows, seed):
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(rows, FEATURES))
    current = rng.normal(size=(windows * WINDOW, FEATURES))
    # A planted shift in the last features, so both sides have work to report.
    current[:, -SHIFTED:] += 0.3
    return reference, current


def write_ndjson(path, matrix, start):
    names = [f"f{i}" for i in range(matrix.shape[1])]
    with open(path, "w") as out:
        for i, row in enumerate(matrix):
            event = {
                "model": "bench",
                "model_version": "v1",
                "ts": "2026-11-28T00:00:00Z",
                "request_id": f"r-{start + i}",
                "features": dict(zip(names, (float(v) for v in row))),
                "output": {"probabilities": [0.3, 0.7]},
            }
            out.write(json.dumps(event))
            out.write("\n")


def time_modelwatch(binary, config, reference, current):
    cmd = [
        binary, "score", "--config", config,
        "--reference", reference, "--current", current,
        "--window", str(WINDOW), "--format", "json",
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"modelwatch score failed: {done.stderr.decode()[-2000:]}")
    scores = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return elapsed, scores


def time_nannyml(reference, current):
    try:
        import nannyml
        import pandas as pd
    except ImportError:
        return None
    cols = [f"f{i}" for i in range(FEATURES)]
    ref = pd.DataFrame(reference, columns=cols)
    cur = pd.DataFrame(current, columns=cols)
    started = time.perf_counter()
    calc = nannyml.UnivariateDriftCalculator(
        column_names=cols,
        continuous_methods=["kolmogorov_smirnov"],
        chunk_size=WINDOW,
    )
    calc.fit(ref)
    calc.calculate(cur)
    return time.perf_counter() - started


def time_evidently(reference, current):
    try:
        import pandas as pd
        try:
            from evidently import Report
            from evidently.presets import DataDriftPreset
            new_api = True
        except ImportError:
            from evidently.report import Report
            from evidently.metric_preset import DataDriftPreset
            new_api = False
    except ImportError:
        return None
    cols = [f"f{i}" for i in range(FEATURES)]
    ref = pd.DataFrame(reference, columns=cols)
    started = time.perf_counter()
    for w in range(len(current) // WINDOW):
        cur = pd.DataFrame(current[w * WINDOW:(w + 1) * WINDOW], columns=cols)
        report = Report([DataDriftPreset()]) if new_api else Report(metrics=[DataDriftPreset()])
        if new_api:
            report.run(cur, ref)
        else:
            report.run(reference_data=ref, current_data=cur)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--modelwatch", required=True)
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--windows", default="1,10")
    parser.add_argument("--skip-python", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="mw-anchors-")
    config = os.path.join(tmp, "modelwatch.toml")
    with open(config, "w") as f:
        f.write('[store]\nurl = "sqlite::memory:"\n')
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        per_window = {}
        for windows in (int(w) for w in args.windows.split(",")):
            reference, current = frames(size, windows, seed=size + windows)
            ref_path = os.path.join(tmp, "reference.ndjson")
            cur_path = os.path.join(tmp, "current.ndjson")
            write_ndjson(ref_path, reference, 0)
            write_ndjson(cur_path, current, size)
            mw, scores = time_modelwatch(args.modelwatch, config, ref_path, cur_path)
            drifted = {s["feature"] for s in scores if s["alert"] != "-" and s["detector"] == "feature_drift"}
            nml = None if args.skip_python else time_nannyml(reference, current)
            evi = None if args.skip_python else time_evidently(reference, current)
            per_window[windows] = mw
            rows.append((size, windows, mw, nml, evi, len(drifted)))
        if len(per_window) >= 2:
            (w1, t1), (wn, tn) = sorted(per_window.items())[0], sorted(per_window.items())[-1]
            rows.append((size, "further", (tn - t1) / (wn - w1), None, None, None))
    print_rows(rows, args.markdown)


def print_rows(rows, markdown):
    def fmt(t):
        return "-" if t is None else f"{t:.3f}"

    def ratio(other, mine):
        return "-" if other is None else f"{other / mine:.1f}x"

    if markdown:
        print("| reference rows | windows of 5,000 | modelwatch s | NannyML s | Evidently s | NannyML / modelwatch | Evidently / modelwatch | features alerted |")
        print("|---|---|---|---|---|---|---|---|")
    else:
        print(f"{'reference':>9} {'windows':>8} {'modelwatch':>11} {'nannyml':>9} {'evidently':>10} {'nml/mw':>7} {'evi/mw':>7} {'alerted':>8}")
    for size, windows, mw, nml, evi, drifted in rows:
        cells = [str(size), str(windows), fmt(mw), fmt(nml), fmt(evi), ratio(nml, mw), ratio(evi, mw),
                 "-" if drifted is None else str(drifted)]
        if markdown:
            print("| " + " | ".join(cells) + " |")
        else:
            print(f"{cells[0]:>9} {cells[1]:>8} {cells[2]:>11} {cells[3]:>9} {cells[4]:>10} {cells[5]:>7} {cells[6]:>7} {cells[7]:>8}")


if __name__ == "__main__":
    main()
