#!/usr/bin/env python3
"""Turns a soak run's `stats.jsonl` (from `vggtd run --stats`) into the soak's files.

    bench/soak-report.py DIR [--bound-mib M] [--windows N]

Writes into DIR:
  soak.csv    window,rss_bytes,live_bytes,map_bytes,live_floor_bytes (the figures after each
              window; live_floor_bytes is the lowest live heap while the window was on its way)
  stages.csv  per window: keyframes, loops, and the milliseconds each stage and output spent on
              it (the lines since the previous window summed: loop checks count to the window
              they follow), with the predictor's idle time (model_idle, of which input_wait
              waiting for keyframes)
  soak.json   the verdicts: warm-up end, live heap growth after it, the kept maps against their
              bound, deepest queues, stage cost per window by map size, and what the daemon held
              the model up (model_idle - input_wait) and the model's busy share
  soak.png    memory over the run, and the daemon's cost per window against the keyframes
Plotting needs matplotlib; without it soak.png is skipped with a message.
"""

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

STAGES = ["ingest", "keyframes", "windows", "inference", "backend", "loops", "overlapped",
          "publish", "model_idle", "input_wait"]
# Everything but the model, per window: `loops` is part of `backend`, and the outputs are part
# of `publish`, so neither is added again.
NOT_MODEL = ["ingest", "keyframes", "windows", "backend", "publish"]


def held(row):
    """What the daemon's own work held the model up in a window: the predictor's idle time
    less the part in which the core waited for keyframes."""
    return row["ms"]["model_idle"] - row["ms"]["input_wait"]


FIGURES = ("windows", "rss_bytes", "live_bytes", "map_bytes", "keyframes", "loops", "queues")


def per_window(lines):
    """One row per window: the figures of its last line, the times summed over its lines (a
    loop check's line joins the window it follows)."""
    rows = []
    for line in lines:
        if not rows or rows[-1]["windows"] != line["windows"]:
            rows.append({"ms": {k: 0.0 for k in STAGES}, "sink_ms": {}})
        row = rows[-1]
        row.update({key: line[key] for key in FIGURES})
        # Each line's floor covers the time since the line before: the window's is their least.
        floor = line.get("live_floor_bytes", line["live_bytes"])
        row["live_floor_bytes"] = min(row.get("live_floor_bytes", floor), floor)
        for k in STAGES:
            row["ms"][k] += line["ms"].get(k, 0.0)
        for name, ms in line.get("sink_ms", {}).items():
            row["sink_ms"][name] = row["sink_ms"].get(name, 0.0) + ms
    return rows


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", type=Path)
    parser.add_argument("--bound-mib", type=float, default=None)
    parser.add_argument("--windows", type=int, default=None)
    args = parser.parse_args()
    lines = [json.loads(l) for l in (args.dir / "stats.jsonl").read_text().splitlines() if l]
    rows = per_window(lines)
    if args.windows is not None:
        rows = rows[: args.windows]
    if len(rows) < 20:
        sys.exit(f"soak-report: only {len(rows)} windows in {args.dir / 'stats.jsonl'}")

    with open(args.dir / "soak.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["window", "rss_bytes", "live_bytes", "map_bytes", "live_floor_bytes"])
        for r in rows:
            w.writerow([r["windows"], r["rss_bytes"], r["live_bytes"], r["map_bytes"],
                        r["live_floor_bytes"]])
    sinks = sorted({name for r in rows for name in r["sink_ms"]})
    with open(args.dir / "stages.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["window", "keyframes", "loops"] + [f"{k}_ms" for k in STAGES]
                   + [f"sink_{n.replace(' ', '_')}_ms" for n in sinks])
        for r in rows:
            w.writerow([r["windows"], r["keyframes"], r["loops"]]
                       + [f"{r['ms'][k]:.3f}" for k in STAGES]
                       + [f"{r['sink_ms'].get(n, 0.0):.3f}" for n in sinks])

    # Warm-up ends when the kept maps first reach 99 % of their bound (or, without one, after
    # the first tenth of the run).
    bound = args.bound_mib * 1048576 if args.bound_mib else None
    warm = len(rows) // 10
    if bound:
        warm = next((i for i, r in enumerate(rows) if r["map_bytes"] >= 0.99 * bound), len(rows))
    after = rows[warm:]
    tenth = max(len(after) // 10, 5)
    # Growth is judged on the windows' floors: what stayed allocated, not what was in flight.
    early_live = median([r["live_floor_bytes"] for r in after[:tenth]])
    late_live = median([r["live_floor_bytes"] for r in after[-tenth:]])
    early_rss = median([r["rss_bytes"] for r in after[:tenth]])
    late_rss = median([r["rss_bytes"] for r in after[-tenth:]])
    growth = (late_live - early_live) / early_live if after and early_live else float("nan")
    keyframes_after = after[-1]["keyframes"] - after[0]["keyframes"] if after else 0

    # Cost per window by map size: windows grouped by the keyframes the map holds.
    buckets = []
    for lo, hi in [(0, 250), (250, 750), (750, 1500), (1500, 3000), (3000, 6000), (6000, 10**9)]:
        group = [r for r in rows if lo <= r["keyframes"] < hi]
        if len(group) < 3:
            continue
        buckets.append({
            "keyframes": f"{lo}-{hi if hi < 10**9 else ''}",
            "windows": len(group),
            "median_ms": {k: round(median([r["ms"][k] for r in group]), 3) for k in STAGES},
            "median_not_model_ms": round(median([sum(r["ms"][k] for k in NOT_MODEL) for r in group]), 3),
            "median_model_held_ms": round(median([held(r) for r in group]), 3),
            "mean_model_held_ms": round(sum(held(r) for r in group) / len(group), 3),
            # The model's busy time over its busy and idle time: 1 when it never waited.
            "model_busy_share": round(sum(r["ms"]["inference"] for r in group)
                                      / max(sum(r["ms"]["inference"] + r["ms"]["model_idle"]
                                                for r in group), 1e-9), 4),
            "median_sink_ms": {n: round(median([r["sink_ms"].get(n, 0.0) for r in group]), 3) for n in sinks},
        })
    verdict = {
        "windows": len(rows),
        "keyframes": rows[-1]["keyframes"],
        "loops": rows[-1]["loops"],
        "warm_up_windows": warm,
        "live_bytes_after_warm_up": early_live,
        "live_bytes_at_end": late_live,
        "live_growth_after_warm_up": growth,
        "live_bytes_per_keyframe_after_warm_up":
            (late_live - early_live) / keyframes_after if keyframes_after else None,
        "rss_bytes_after_warm_up": early_rss,
        "rss_bytes_at_end": late_rss,
        "map_bytes_max": max(r["map_bytes"] for r in rows),
        "map_bound_bytes": bound,
        "deepest_queues": {q: max(r["queues"][q] for r in rows) for q in rows[0]["queues"]},
        "cost_by_keyframes": buckets,
    }
    (args.dir / "soak.json").write_text(json.dumps(verdict, indent=2) + "\n")
    print(json.dumps(verdict, indent=2))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("soak-report: matplotlib is missing; soak.png skipped", file=sys.stderr)
        return
    mib = 1048576.0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8))
    x = [r["windows"] for r in rows]
    top.plot(x, [r["rss_bytes"] / mib for r in rows], label="resident (RSS)")
    top.plot(x, [r["live_bytes"] / mib for r in rows], label="live heap")
    top.plot(x, [r["live_floor_bytes"] / mib for r in rows], label="live heap floor")
    top.plot(x, [r["map_bytes"] / mib for r in rows], label="kept maps")
    if bound:
        top.axhline(bound / mib, color="grey", linestyle="--", label="map bound")
    if warm < len(rows):
        top.axvline(rows[warm]["windows"], color="grey", linestyle=":", label="warm-up ends")
    top.set_xlabel("window")
    top.set_ylabel("MiB")
    top.set_title(f"vggtd soak: {len(rows)} windows, {rows[-1]['keyframes']} keyframes, "
                  f"{rows[-1]['loops']} loops; live heap {growth * 100:+.2f} % after warm-up")
    top.legend(loc="lower right")
    k = [r["keyframes"] for r in rows]
    for stage in ["ingest", "keyframes", "backend", "loops", "publish"]:
        bottom.plot(k, [r["ms"][stage] for r in rows], ".", markersize=2, label=stage)
    bottom.plot(k, [sum(r["ms"][s] for s in NOT_MODEL) for r in rows], "-", linewidth=0.6,
                color="black", label="all but the model (busy, on their threads)")
    bottom.plot(k, [held(r) for r in rows], "+", markersize=3, color="black",
                label="the model held up by the daemon")
    bottom.set_xlabel("keyframes in the map")
    bottom.set_ylabel("ms per window")
    bottom.set_yscale("symlog", linthresh=1.0)
    bottom.legend(loc="upper left", markerscale=4)
    fig.tight_layout()
    fig.savefig(args.dir / "soak.png", dpi=110)
    print(f"soak-report: wrote {args.dir / 'soak.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
