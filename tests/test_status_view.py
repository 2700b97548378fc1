"""`boxer status` as a stable format: the text (100 columns), the wide text and the JSON are
pinned by golden files (BOXER_REGEN_GOLDEN=1 rewrites them; review the diff)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from status_fixture import NOW, status

from boxer.cli.status_view import _age, status_json, status_text, stopped_text

GOLDEN = Path(__file__).parent / "golden" / "status"
REGEN = os.environ.get("BOXER_REGEN_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGEN:
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with BOXER_REGEN_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs (BOXER_REGEN_GOLDEN=1 to accept, then review the diff)"


def test_text_matches_golden_and_fits_100_columns() -> None:
    text = status_text(status(), wide=False)
    check_golden("text.txt", text + "\n")
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "RESTARTS" in text.splitlines()[6]


def test_wide_matches_golden() -> None:
    check_golden("wide.txt", status_text(status(), wide=True) + "\n")


def test_json_matches_golden_and_names_things_as_the_file_does() -> None:
    shown = status_json(status(), controller_pid=3999)
    check_golden("status.json", json.dumps(shown, indent=2) + "\n")
    api = shown["services"]["api"]
    assert (api["minInstances"], api["maxInstances"]) == (0, 40)
    assert api["autoscale"] == {"metric": "activeConnections", "target": 10.0}
    assert shown["services"]["web"]["autoscale"] is None
    assert api["load"] == 14.0
    starting = shown["instances"][1]
    assert starting["ageSeconds"] == 4.1 and "pid" in starting and "address" not in starting
    assert shown["controllerPid"] == 3999
    assert "pid" not in shown and "min" not in api


def test_a_stopped_deployment_in_json_is_only_its_name() -> None:
    assert status_json(None, name="web") == {"name": "web", "running": False}
    assert status_json(status(running=False)) == {"name": "web-autoscale", "running": False}


@pytest.mark.parametrize(("seconds", "shown"), [
    (None, "-"), (0, "0.0s"), (4.087, "4.1s"), (9.96, "10s"), (59.4, "59s"), (59.7, "1m00s"),
    (899.6, "15m00s"), (3599.5, "1h00m"), (3725, "1h02m"), (90061, "1d01h"),
])
def test_durations_read_as_a_person_writes_them(seconds: float | None, shown: str) -> None:
    assert _age(seconds) == shown


def test_a_stopped_deployment_says_what_to_do() -> None:
    assert stopped_text("web", NOW - 125, "/srv/deploy.yaml", NOW) == (
        "deployment web is stopped (down 2m05s ago): `boxer up /srv/deploy.yaml` starts it again,"
        " `boxer report --name web` draws its run, `boxer rm web` removes what it left.")
