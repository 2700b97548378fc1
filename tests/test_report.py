"""`boxer report`: the PNG drawn from a timeline, its time window, title and marks; the CLI after
`boxer down`. The plot itself is looked at by a person (docs/img/report-example.png); here the
figures it is drawn from are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from boxer.controller.report import ReportError, parse_bound, write_report

T0 = 1_780_000_000.0  # a fixed wall-clock start


def timeline_rows() -> list[dict]:
    """Two minutes of a web (1 vm) + api (0..8 function) run: a burst with panic, an edit
    applied at 60 s that rolls api out, two failures and a back-off at 80-90 s."""
    rows = []
    for step in range(0, 481):
        t = step * 0.25
        burst = 20 <= t < 70
        load = 60.0 if burst else (8.0 if t < 100 else 0.0)
        api_ready = min(6, max(0, int((t - 21) * 2))) if burst else (1 if 0 < t < 100 and t >= 21 else 0)
        api_starting = 2 if 20 <= t < 24 else 0
        events = []
        if step == 240:
            events = [{"kind": "reapply", "service": None, "text": "edited file applied"},
                      {"kind": "rollout", "service": "api", "text": "api rolled out"}]
        if step in (320, 340):
            events.append({"kind": "failure", "service": "api", "text": "api-3: exited with status 1"})
        rows.append({
            "t": T0 + t,
            "services": {
                "web": {"load": 0, "desired": 1, "ready": {"vm": 1, "function": 0}, "starting": 0,
                        "draining": 0, "pending": False, "target": None, "panic": False, "backoff": 0},
                "api": {"load": load, "desired": 6 if burst else (1 if t < 100 else 0),
                        "ready": {"vm": 0, "function": api_ready}, "starting": api_starting,
                        "draining": 0, "pending": False, "target": 10, "panic": 22 <= t < 50,
                        "backoff": 1 if 80 <= t < 90 else 0},
            },
            "decisions": [],
            "ready_latencies": [["api-1", 0.41]] if step == 90 else [],
            "events": events,
        })
    return rows


@pytest.fixture
def timeline(tmp_path: Path) -> Path:
    path = tmp_path / "timeline.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in timeline_rows()))
    return path


def test_the_report_summarises_what_it_draws(timeline: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.png"
    summary = write_report(timeline, out, title="web-autoscale")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # web 1 + api 6 stacked: the peak is 7, not 6
    assert summary == ("120 s, 481 ticks, 2 services (web, api), peak 7 ready instances, 1 instance starts,"
                       " 2 failures, 1 edits applied")


def test_since_and_until_cut_the_window(timeline: Path, tmp_path: Path) -> None:
    summary = write_report(timeline, tmp_path / "w.png", since="40s")  # the last 40 s
    assert summary.startswith("40 s, 161 ticks,")
    assert "2 failures, 0 edits applied" in summary  # the failures at 80 and 85 s, not the edit at 60 s
    assert parse_bound("1m30s", T0, T0 + 120) == T0 + 30
    assert parse_bound("2h", T0, T0 + 120) == T0 + 120 - 7200


def test_a_bad_time_says_which_forms_it_takes(timeline: Path, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"cannot read the time 'yesterday': give a duration"):
        write_report(timeline, tmp_path / "x.png", since="yesterday")
    with pytest.raises(ReportError, match="the window would end before it starts"):
        write_report(timeline, tmp_path / "x.png", since="10s", until="50s")


def test_an_empty_timeline_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text("")
    with pytest.raises(ReportError, match="is empty: the controller has not ticked yet"):
        write_report(tmp_path / "t.jsonl", tmp_path / "x.png")


def _stopped_deployment(root: Path, name: str, rows: list[dict]) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "deployment.json").write_text(json.dumps(
        {"name": name, "file": f"/x/{name}.yaml", "dir": "/x", "controller_pid": None, "down_at": T0}))
    (folder / "timeline.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_after_down_reads_the_current_deployments_timeline(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from boxer.cli import _context, main

    monkeypatch.setenv("BOXER_DEPLOY_STATE_ROOT", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    _stopped_deployment(tmp_path / "state", "web-autoscale", timeline_rows())
    _stopped_deployment(tmp_path / "state", "other", timeline_rows()[:10])
    ambiguous = CliRunner().invoke(main, ["report"])
    assert ambiguous.exit_code == 1
    assert ambiguous.output == ("boxer: no deployment is running: known here: other, web-autoscale (`boxer ls`"
                                " shows them); start one with `boxer up FILE`\n")
    _context.set_current("deployment", "web-autoscale")  # what `boxer up` left
    result = CliRunner().invoke(main, ["report", "--since", "1m"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("wrote web-autoscale-timeline.png: 60 s, 241 ticks, 2 services")
    assert (tmp_path / "web-autoscale-timeline.png").exists()
    missing = CliRunner().invoke(main, ["report", "--name", "nosuch"])
    assert missing.exit_code == 1
    assert missing.output.startswith("boxer: no deployment named 'nosuch': known here: other, web-autoscale")
