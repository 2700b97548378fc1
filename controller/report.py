"""`boxer report`: a PNG of a run's timeline (timeline.jsonl written by the controller), made
to be put in a postmortem.

Panels sharing a wall-clock time axis:
- load: each service's autoscale metric, against its capacity at target (target x ready
  instances: above that line the autoscaler scales up), with panic (burst mode) shaded;
- instances: ready instances stacked by service and placement (so 1 web + 2 api reads as 3),
  starting ones hatched on top, the desired count as a line, slots in crash-loop back-off shaded;
- latency (when there is any): each instance's launch-to-listening time, and request latency
  percentiles when a load generator wrote them (load.jsonl: {t, connections, p50_ms, p99_ms}).
Every panel carries the marks of what happened: an edited file applied, a rollout, failures.
Legends sit beside the plot, never over the data, and list only series that have any.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ReportError", "parse_bound", "read_timeline", "write_report"]


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
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a run cut short
        if isinstance(row, dict) and "t" in row:
            rows.append(row)
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


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_bound(text: str, first: float, last: float) -> float:
    """A --since/--until value as a wall-clock time: a duration (`90s`, `5m`, `1h30m`) counts
    back from the end of the run, as kubectl's --since does; `HH:MM[:SS]` is that time on the
    day the run started (local time); an ISO 8601 date and time is itself."""
    text = text.strip()
    match = _DURATION.match(text)
    if text and match and any(match.groups()):
        hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
        return last - (hours * 3600 + minutes * 60 + seconds)
    clock = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d+)?))?", text)
    if clock:
        day = dt.datetime.fromtimestamp(first)
        seconds = float(clock.group(3) or 0)
        at = day.replace(hour=int(clock.group(1)), minute=int(clock.group(2)), second=int(seconds),
                         microsecond=int(seconds % 1 * 1e6))
        return at.timestamp()
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ReportError(f"cannot read the time {text!r}: give a duration before the end (90s, 5m,"
                          " 1h30m), a clock time (14:05 or 14:05:30) or an ISO date and time") from None


@dataclass(frozen=True)
class _Marks:
    reapplies: list[float]
    rollouts: list[tuple[float, str]]
    failures: list[tuple[float, str]]


def _marks(rows: list[dict[str, Any]]) -> _Marks:
    reapplies, rollouts, failures = [], [], []
    for row in rows:
        for event in row.get("events", []):
            kind = event.get("kind")
            if kind == "reapply":
                reapplies.append(row["t"])
            elif kind == "rollout":
                rollouts.append((row["t"], str(event.get("service"))))
            elif kind == "failure":
                failures.append((row["t"], str(event.get("text"))))
    return _Marks(reapplies, rollouts, failures)


def _spans(times: list[float], flags: list[bool]) -> list[tuple[float, float]]:
    """The (start, end) stretches where `flags` hold."""
    spans, begin = [], None
    for at, flag in zip(times, flags, strict=True):
        if flag and begin is None:
            begin = at
        elif not flag and begin is not None:
            spans.append((begin, at))
            begin = None
    if begin is not None:
        spans.append((begin, times[-1]))
    return spans


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def write_report(timeline: Path, out: Path, load_file: Path | None = None, *, title: str | None = None,
                 since: str | None = None, until: str | None = None) -> str:
    """Draw the PNG; return a one-line summary of what it shows."""
    try:
        import matplotlib
    except ImportError:
        raise ReportError("`boxer report` needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = read_timeline(timeline)
    first, last = rows[0]["t"], rows[-1]["t"]
    start = parse_bound(since, first, last) if since else first
    end = parse_bound(until, first, last) if until else last
    if end <= start:
        raise ReportError(f"--since/--until leave nothing: the window would end before it starts"
                          f" (the run is {dt.datetime.fromtimestamp(first):%H:%M:%S} to"
                          f" {dt.datetime.fromtimestamp(last):%H:%M:%S})")
    rows = [r for r in rows if start <= r["t"] <= end]
    if not rows:
        raise ReportError(f"no ticks between {dt.datetime.fromtimestamp(start):%H:%M:%S} and"
                          f" {dt.datetime.fromtimestamp(end):%H:%M:%S}: the run is"
                          f" {dt.datetime.fromtimestamp(first):%H:%M:%S} to"
                          f" {dt.datetime.fromtimestamp(last):%H:%M:%S}")
    load_rows = [x for x in _read_load(load_file) if start <= x.get("t", start) <= end]
    services = list(dict.fromkeys(name for r in rows for name in r["services"]))
    times = [r["t"] for r in rows]
    when = [dt.datetime.fromtimestamp(t) for t in times]

    def series(service: str, *keys: str) -> list[float]:
        values = []
        for row in rows:
            value: Any = row["services"].get(service, {})
            for key in keys:
                value = value.get(key, 0) if isinstance(value, dict) else 0
            values.append(float(value or 0))
        return values

    ready_t, ready_s = [], []
    for row in rows:
        for _, seconds in row.get("ready_latencies", []):
            ready_t.append(dt.datetime.fromtimestamp(row["t"]))
            ready_s.append(seconds * 1000)
    has_latency = bool(ready_t or load_rows)
    panels = 3 if has_latency else 2
    fig, axes = plt.subplots(panels, 1, figsize=(12, 3.2 * panels + 0.6), sharex=True,
                             gridspec_kw={"height_ratios": [1, 1.4, 0.9][:panels]})
    load_ax, inst_ax = axes[0], axes[1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {name: colors[i % len(colors)] for i, name in enumerate(services)}
    marks = _marks(rows)

    # -- load against capacity at target
    for name in services:
        load = series(name, "load")
        targets = [r["services"].get(name, {}).get("target") for r in rows]
        ready = [a + b for a, b in zip(series(name, "ready", "vm"), series(name, "ready", "function"),
                                       strict=True)]
        if any(load):
            load_ax.plot(when, load, color=color[name], linewidth=1.6, label=f"{name} load")
        if any(t is not None for t in targets):
            capacity = [(t or 0) * n for t, n in zip(targets, ready, strict=True)]
            target = next(t for t in targets if t is not None)
            load_ax.step(when, capacity, where="post", color=color[name], linestyle="--",
                         linewidth=1, label=f"{name} capacity at target ({target:g} x ready)")
    if load_rows:
        load_ax.step([dt.datetime.fromtimestamp(x["t"]) for x in load_rows],
                     [x["connections"] for x in load_rows], where="post", linestyle=":",
                     color="grey", label="load generator")
    panic = [any(r["services"].get(n, {}).get("panic") for n in services) for r in rows]
    for index, (a, b) in enumerate(_spans(times, panic)):
        load_ax.axvspan(dt.datetime.fromtimestamp(a), dt.datetime.fromtimestamp(b), color="tab:red",
                        alpha=0.12, linewidth=0, label="panic (burst mode)" if index == 0 else None)
    load_ax.set_ylabel("load\n(autoscale metric)")
    load_ax.set_ylim(bottom=0)

    # -- instances, stacked by service and placement
    stack, labels, fills = [], [], []
    for name in services:
        for placement, alpha in (("vm", 0.95), ("function", 0.55)):
            values = series(name, "ready", placement)
            if any(values):
                stack.append(values)
                labels.append(f"{name} on {placement}")
                fills.append((color[name], alpha))
    total_ready = [sum(v) for v in zip(*stack, strict=True)] if stack else [0.0] * len(rows)
    if stack:
        polys = inst_ax.stackplot(when, *stack, labels=labels, step="post", linewidth=0)
        for poly, (fill, alpha) in zip(polys, fills, strict=True):
            poly.set_facecolor(fill)
            poly.set_alpha(alpha)
    starting = [sum(series(n, "starting")[i] for n in services) for i in range(len(rows))]
    if any(starting):
        inst_ax.fill_between(when, total_ready, [a + b for a, b in zip(total_ready, starting, strict=True)],
                             step="post", facecolor="none", edgecolor="grey", hatch="///", linewidth=0,
                             label="starting")
    desired = [sum(series(n, "desired")[i] for n in services) for i in range(len(rows))]
    inst_ax.step(when, desired, where="post", color="black", linestyle="--", linewidth=1.2,
                 label="desired" if len(services) == 1 else "desired (all services)")
    backoff = [any(r["services"].get(n, {}).get("backoff") for n in services) for r in rows]
    for index, (a, b) in enumerate(_spans(times, backoff)):
        inst_ax.axvspan(dt.datetime.fromtimestamp(a), dt.datetime.fromtimestamp(b), color="tab:orange",
                        alpha=0.15, linewidth=0, label="crash-loop back-off" if index == 0 else None)
    peak = max(max(total_ready), max(desired), max(a + b for a, b in zip(total_ready, starting, strict=True)))
    inst_ax.set_ylim(0, max(1.0, peak) * 1.18)  # head room: the failure marks sit above the data
    inst_ax.yaxis.get_major_locator().set_params(integer=True)
    if marks.failures:
        inst_ax.plot([dt.datetime.fromtimestamp(t) for t, _ in marks.failures],
                     [max(1.0, peak) * 1.09] * len(marks.failures), linestyle="none", marker="x",
                     color="tab:red", markersize=7, label=f"failure ({len(marks.failures)})")
    inst_ax.set_ylabel("instances")

    # -- latency
    if has_latency:
        lat_ax = axes[2]
        if ready_t:
            lat_ax.scatter(ready_t, ready_s, s=14, color="tab:green", label="launch -> listening")
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            points = [(dt.datetime.fromtimestamp(x["t"]), x[key]) for x in load_rows if x.get(key) is not None]
            if points:
                lat_ax.plot(*zip(*points, strict=True), marker="o", markersize=3, linestyle=style,
                            color="tab:purple", label=f"request {key[:3]} (per load step)")
        lat_ax.set_ylabel("latency (ms)")
        lat_ax.set_ylim(bottom=0)

    # -- marks on every panel, then legends beside the plot
    for number, ax in enumerate(axes):  # the marks' legend once, on the top panel
        for index, at in enumerate(marks.reapplies):
            ax.axvline(dt.datetime.fromtimestamp(at), color="dimgrey", linestyle="-.", linewidth=1.2,
                       label="edited file applied" if index == 0 and number == 0 else None)
        for index, (at, _) in enumerate(marks.rollouts):
            ax.axvline(dt.datetime.fromtimestamp(at), color="tab:purple", linestyle=":", linewidth=1.6,
                       label="rollout" if index == 0 and number == 0 else None)
        ax.grid(True, alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                      frameon=False)
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    axes[-1].set_xlabel(f"local time ({dt.datetime.fromtimestamp(rows[0]['t']):%Y-%m-%d})")
    axes[-1].set_xlim(when[0], when[-1] if len(when) > 1 else when[0] + dt.timedelta(seconds=1))
    name = title or timeline.stem
    fig.suptitle(f"{name}: {dt.datetime.fromtimestamp(rows[0]['t']):%Y-%m-%d %H:%M:%S} to"
                 f" {dt.datetime.fromtimestamp(rows[-1]['t']):%H:%M:%S}"
                 f" ({_duration(rows[-1]['t'] - rows[0]['t'])})", fontsize="large", x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    duration = rows[-1]["t"] - rows[0]["t"]
    count = len(services)
    return (f"{duration:.0f} s, {len(rows)} ticks, {count} service{'' if count == 1 else 's'}"
            f" ({', '.join(services)}), peak {max(total_ready):g} ready instances, {len(ready_t)} instance starts,"
            f" {len(marks.failures)} failures, {len(marks.reapplies)} edits applied")
