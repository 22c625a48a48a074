#!/usr/bin/env python3
"""`modelwatch score` against the Python drift tools on the same frames.

Generates numeric frames (reference of 1k, 10k and 50k rows x 50 features;
current data of 1 and 10 windows of 5,000 rows, the last features shifted),
writes them as modelwatch NDJSON, and times in the same run, two ways:

- The work on frames in memory: `modelwatch score`'s own fit and window
  times (from its JSON log) against NannyML's UnivariateDriftCalculator
  (KS, chunks of 5,000; fit + calculate) and Evidently's DataDriftPreset
  (one report per window), timed inside Python on DataFrames already in
  memory.
- The whole process from the same NDJSON files: `modelwatch score` as a user
  runs it, against a Python process that imports NannyML, reads the files
  into DataFrames and runs the same calculator.

modelwatch runs twice: with its default detectors (KS with effect sizes and
calibrated bands, confidence, class mix, out-of-distribution, probing and
step scores: far more than one test per feature), and with the same work as
NannyML's calculator (KS per feature, every other detector off). A tool that
is not importable is skipped and said so. Each time is the fastest of
`--repeat` runs (3), for modelwatch and NannyML alike; Evidently runs once.
`--markdown` prints the tables for daemon/docs/benchmarks.md.

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


def configs(tmp):
    """The default detectors, and KS per feature alone (NannyML's work)."""
    base = '[store]\nurl = "sqlite::memory:"\n[log]\nformat = "json"\n'
    default = os.path.join(tmp, "default.toml")
    with open(default, "w") as f:
        f.write(base)
    ks = os.path.join(tmp, "ks.toml")
    with open(ks, "w") as f:
        f.write(base + "[detect.drift]\ncalibrate = false\n")
        for detector in ("ood", "probing", "steps", "class_prior", "volume", "llm_clients"):
            f.write(f"[detect.{detector}]\nenabled = false\n")
        for i in range(FEATURES):
            f.write(f'[detect.drift.features.f{i}]\neffect = "none"\n')
    return {"default": default, "ks": ks}


def time_modelwatch(binary, config, reference, current):
    """Whole-process seconds, the scores, and the fit + windows seconds
    the process logged."""
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
    fit_ms, window_ms = 0, []
    for line in done.stderr.splitlines():
        try:
            fields = json.loads(line).get("fields", {})
        except ValueError:
            continue
        if fields.get("message") == "reference fitted":
            fit_ms += fields["took_ms"]
        elif fields.get("message") == "window scored":
            window_ms.append(fields["took_ms"])
    # Windows after the first: what each further window costs.
    further = max(window_ms[1:]) if len(window_ms) > 1 else None
    return elapsed, scores, (fit_ms + sum(window_ms)) / 1000, further


NANNYML_PROCESS = """
import json, sys
import nannyml, pandas as pd

def frame(path):
    with open(path) as f:
        return pd.DataFrame([json.loads(line)["features"] for line in f if line.strip()])

reference, current = frame(sys.argv[1]), frame(sys.argv[2])
calc = nannyml.UnivariateDriftCalculator(
    column_names=list(reference.columns),
    continuous_methods=["kolmogorov_smirnov"],
    chunk_size=int(sys.argv[3]),
)
calc.fit(reference)
calc.calculate(current)
"""


def time_nannyml_process(reference, current):
    """A Python process as a user runs one: import, read the NDJSON files,
    fit, calculate."""
    try:
        import nannyml  # noqa: F401
    except ImportError:
        return None
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", NANNYML_PROCESS, reference, current, str(WINDOW)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"the NannyML process failed: {done.stderr.decode()[-2000:]}")
    return elapsed


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
    # These VMs stall at random on fresh memory (the kernel's page clearing
    # took from 0.1 s to 1.6 s of the same run): each tool's fastest of
    # `--repeat` runs, alike for every tool but Evidently (a minute a run,
    # and 100x apart either way).
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    tmp = tempfile.mkdtemp(prefix="mw-anchors-")
    config = configs(tmp)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for windows in (int(w) for w in args.windows.split(",")):
            reference, current = frames(size, windows, seed=size + windows)
            ref_path = os.path.join(tmp, "reference.ndjson")
            cur_path = os.path.join(tmp, "current.ndjson")
            write_ndjson(ref_path, reference, 0)
            write_ndjson(cur_path, current, size)
            row = {"size": size, "windows": windows}
            best = {}
            for _ in range(args.repeat):
                for name, path in config.items():
                    whole, scores, work, slowest = time_modelwatch(args.modelwatch, path, ref_path, cur_path)
                    drifted = {s["feature"] for s in scores if s["alert"] != "-" and s["detector"] == "feature_drift"}
                    run = (whole, work, len(drifted), slowest)
                    best[name] = run if name not in best else fastest(best[name], run)
                if not args.skip_python:
                    for name, timed in (("nannyml", lambda: time_nannyml(reference, current)),
                                        ("nannyml_process", lambda: time_nannyml_process(ref_path, cur_path))):
                        t = timed()
                        best[name] = t if best.get(name) is None else min(best[name], t)
            row.update(best)
            if not args.skip_python:
                row["evidently"] = time_evidently(reference, current)
            rows.append(row)
    print_rows(rows, args.markdown)


def fastest(a, b):
    """Of two modelwatch runs, each time at its fastest: the whole process and
    the logged work are taken apart, as each tool's are."""
    slowest = [x for x in (a[3], b[3]) if x is not None]
    if a[2] != b[2]:
        sys.exit(f"two runs of the same frames alerted on {a[2]} and {b[2]} features")
    return (min(a[0], b[0]), min(a[1], b[1]), a[2], min(slowest) if slowest else None)


def print_rows(rows, markdown):
    def fmt(t):
        return "-" if t is None else f"{t:.3f}"

    def ratio(other, mine):
        return "-" if other is None else f"{other / mine:.1f}x"

    def table(title, header, cells):
        print()
        print(title)
        if markdown:
            print("| " + " | ".join(header) + " |")
            print("|" + "---|" * len(header))
        else:
            print("  ".join(f"{h:>14}" for h in header))
        for c in cells:
            print("| " + " | ".join(c) + " |" if markdown else "  ".join(f"{x:>14}" for x in c))

    table(
        "Work on frames in memory (modelwatch: fit + windows as it logs them; Python: fit + calculate), seconds",
        ["reference rows", "windows of 5,000", "slowest window after the first, ms (default)",
         "modelwatch KS", "modelwatch default",
         "NannyML", "Evidently", "NannyML / KS", "NannyML / default", "Evidently (one run) / default"],
        [[str(r["size"]), str(r["windows"]), "-" if r["default"][3] is None else str(r["default"][3]), fmt(r["ks"][1]), fmt(r["default"][1]),
          fmt(r.get("nannyml")), fmt(r.get("evidently")),
          ratio(r.get("nannyml"), r["ks"][1]), ratio(r.get("nannyml"), r["default"][1]),
          ratio(r.get("evidently"), r["default"][1])] for r in rows],
    )
    table(
        "Whole process from the same NDJSON files, seconds",
        ["reference rows", "windows of 5,000", "modelwatch KS", "modelwatch default",
         "NannyML process", "NannyML / KS", "NannyML / default", "features alerted"],
        [[str(r["size"]), str(r["windows"]), fmt(r["ks"][0]), fmt(r["default"][0]),
          fmt(r.get("nannyml_process")), ratio(r.get("nannyml_process"), r["ks"][0]),
          ratio(r.get("nannyml_process"), r["default"][0]),
          f'{r["ks"][2]} / {r["default"][2]}'] for r in rows],
    )


if __name__ == "__main__":
    main()
