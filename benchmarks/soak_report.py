"""benchmarks/soak.py's raw output: per-minute samples (RSS, requests, latency, errors), every RSS
sample, the summary, and a plot of RSS over time, written where RESULTS.md can point at them."""
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path


def slope_mb_per_min(rss: list[tuple[float, float]], after_s: float) -> float:
    """Least-squares slope of RSS (MB) against minutes, over the samples taken at or after ``after_s``."""
    pts = [(t / 60, r) for t, r in rss if t >= after_s]
    if len(pts) < 3:
        return float("nan")
    return statistics.linear_regression([t for t, _ in pts], [r for _, r in pts]).slope


def per_minute(records: list, rss: list, cached: list, expect: dict) -> list[dict]:
    """One row per minute of the run: the last RSS sample in it, and the requests that ended in it."""
    ended: dict[int, list] = defaultdict(list)
    for kind, outcome, s, t_end in records:
        ended[int(t_end // 60)].append((kind, outcome, s))
    last_rss = {int(t // 60): r for t, r in rss}
    last_cached = {int(t // 60): n for t, n in cached}
    rows = []
    for m in range(max([*ended, *last_rss, 0]) + 1):
        reqs = ended.get(m, [])
        lat = sorted(s for _, o, s in reqs if o == "200")
        rows.append({
            "minute": m, "rss_mb": last_rss.get(m), "kv_blocks_cached": last_cached.get(m),
            "requests": len(reqs), "completed": len(lat),
            "p50_s": round(lat[len(lat) // 2], 3) if lat else None,
            "p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3) if lat else None,
            "lost": sum(o.startswith("lost") for _, o, _ in reqs),
            "disconnected": sum(o == "disconnected" for _, o, _ in reqs),
            "unexpected": sum(not (o.isdigit() and int(o) in expect[k]) and o != "disconnected"
                              and not o.startswith("lost") for k, o, _ in reqs),
            "status_5xx": sum(o.isdigit() and int(o) >= 500 for _, o, _ in reqs)})
    return rows


def write(out_dir: str, name: str, summary: dict, records: list, rss: list, cached: list, expect: dict,
          warmup_s: float) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = per_minute(records, rss, cached, expect)
    paths = [out / f"{name}.minutes.csv", out / f"{name}.rss.csv", out / f"{name}.summary.json"]
    with open(paths[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(paths[1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "rss_mb"])
        w.writerows([round(t, 1), round(r, 2)] for t, r in rss)
    paths[2].write_text(json.dumps(summary, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the bench extra: pip install -e .[bench]
        return paths
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([t / 60 for t, _ in rss], [r for _, r in rss], lw=1, label="server RSS")
    ax.axvline(warmup_s / 60, color="grey", ls=":", label="end of warm-up")
    r = summary["rss_mb"]
    ax.set(xlabel="minutes", ylabel="RSS (MB)",
           title=f"{name}: {summary['clients']} clients, slope after warm-up {r['post_warmup_slope_mb_per_min']} MB/min")
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths.append(out / f"{name}.rss.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
