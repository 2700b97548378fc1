"""`boxer report`: a PNG of a run's timeline (timeline.jsonl written by the controller).

Three panels sharing the time axis: the load per service (its autoscale metric), the ready
instances per placement (stacked vm / function, with the desired count as a line), and latency:
each instance's launch-to-listening time as a dot, plus request latency percentiles when a load
generator wrote them (load.jsonl: {t, connections, p50_ms, p99_ms}).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["ReportError", "read_timeline", "write_report"]


class ReportError(Exception):
    pass


def read_timeline(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ReportError(f"no timeline at {path}: has the deployment run?") from None
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the last line of a run cut short
    if not rows:
        raise ReportError(f"{path} is empty: the controller has not ticked yet")
    return rows


def _read_load(path: Path | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def write_report(timeline: Path, out: Path, load_file: Path | None = None) -> str:
    """Draw the PNG; return a one-line summary of what it shows."""
    try:
        import matplotlib
    except ImportError:
        raise ReportError("`boxer report` needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = read_timeline(timeline)
    load_rows = _read_load(load_file)
    t0 = rows[0]["t"]
    services = list(rows[0]["services"])
    t = [r["t"] - t0 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True)
    load_ax, inst_ax, lat_ax = axes

    for name in services:
        load_ax.plot(t, [r["services"].get(name, {}).get("load", 0) for r in rows], label=name)
    if load_rows:
        load_ax.step([x["t"] - t0 for x in load_rows], [x["connections"] for x in load_rows],
                     where="post", linestyle=":", color="grey", label="load generator")
    load_ax.set_ylabel("load\n(autoscale metric)")
    load_ax.legend(loc="upper left", fontsize="small")

    peak = 0
    for name in services:
        vm = [r["services"].get(name, {}).get("ready", {}).get("vm", 0) for r in rows]
        fn = [r["services"].get(name, {}).get("ready", {}).get("function", 0) for r in rows]
        desired = [r["services"].get(name, {}).get("desired", 0) for r in rows]
        peak = max(peak, max(a + b for a, b in zip(vm, fn, strict=False)))
        inst_ax.stackplot(t, vm, fn, labels=[f"{name} vm", f"{name} function"], alpha=0.6,
                          step="post")
        inst_ax.step(t, desired, where="post", linestyle="--", linewidth=1,
                     label=f"{name} desired")
    inst_ax.set_ylabel("ready instances")
    inst_ax.legend(loc="upper left", fontsize="small", ncol=2)

    ready_t, ready_s = [], []
    for r in rows:
        for _, seconds in r.get("ready_latencies", []):
            ready_t.append(r["t"] - t0)
            ready_s.append(seconds * 1000)
    if ready_t:
        lat_ax.scatter(ready_t, ready_s, s=12, label="launch -> listening (ms)")
    if load_rows:
        for key in ("p50_ms", "p99_ms"):
            points = [(x["t"] - t0, x[key]) for x in load_rows if x.get(key) is not None]
            if points:
                lat_ax.plot(*zip(*points, strict=False), marker="o", label=f"request {key} (per load step)")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_xlabel("seconds since the first tick")
    if ready_t or load_rows:
        lat_ax.legend(loc="upper left", fontsize="small")
    fig.suptitle(f"boxer run timeline ({timeline})", fontsize="medium")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    duration = t[-1] if t else 0
    return (f"{duration:.0f} s, {len(rows)} ticks, services {', '.join(services)}, peak "
            f"{peak} ready instances, {len(ready_t)} instance starts")
