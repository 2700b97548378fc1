"""The deployment record (deployment.json): typed, round-trips, and reads what older boxers wrote."""

from __future__ import annotations

import json
import os

import pytest

from boxer.controller.paths import DeployPaths
from boxer.controller.record import DeploymentRecord, RecordError

# Written by `boxer up` (lambda backend) before the record was typed.
OLD_LAMBDA = {
    "name": "web", "file": "/srv/web/deploy.yaml", "dir": "/srv/web", "lab": None, "backend": "lambda",
    "created_at": 1700000000.5, "metrics_port": 9100, "controller_pid": 4242, "register_timeout": 30.0,
    "outputs": "/srv/web/outputs.json", "function": "boxer-web", "region": "eu-west-1",
    "coordinator": "203.0.113.7:7000", "max_concurrency": 40, "generation": 2,
}


def test_reads_an_untyped_record_and_writes_the_same_keys() -> None:
    record = DeploymentRecord.from_json(OLD_LAMBDA)
    assert record.backend == "lambda" and record.max_concurrency == 40 and record.generation == 2
    assert record.to_json() == {**OLD_LAMBDA, "down_at": None, "image": None}
    assert DeploymentRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_unknown_keys_are_ignored_missing_ones_named() -> None:
    assert DeploymentRecord.from_json({**OLD_LAMBDA, "later": 1}).name == "web"
    with pytest.raises(RecordError, match="lacks dir, file"):
        DeploymentRecord.from_json({"name": "web"})
    with pytest.raises(RecordError, match="unknown backend 'vm'"):
        DeploymentRecord.from_json({**OLD_LAMBDA, "backend": "vm"})
    with pytest.raises(RecordError, match="JSON object, not list"):
        DeploymentRecord.from_json([])


def test_save_load_and_a_dead_controller(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BOXER_DEPLOY_STATE_ROOT", str(tmp_path))  # read on each use, not at import
    paths = DeployPaths("web")
    paths.make()
    assert DeploymentRecord.load(paths) is None
    record = DeploymentRecord(name="web", file="/f.yaml", dir="/", controller_pid=os.getpid())
    record.save(paths)
    assert DeploymentRecord.load(paths) == record
    # Our own pid runs pytest, not the controller: a recycled pid is not taken for it.
    assert not record.controller_alive
    paths.deployment.write_text("{half")
    assert DeploymentRecord.load(paths) is None


def test_marked_down_the_record_and_the_last_status_say_it_stopped(tmp_path, monkeypatch) -> None:
    from boxer.controller.paths import read_json, write_json_atomic
    from boxer.controller.takedown import mark_down

    monkeypatch.setenv("BOXER_DEPLOY_STATE_ROOT", str(tmp_path))
    paths = DeployPaths("web")
    paths.make()
    mark_down(paths)  # nothing there yet: nothing to mark, and no error
    DeploymentRecord(name="web", file="/f.yaml", dir="/", controller_pid=4242).save(paths)
    write_json_atomic(paths.status, {"name": "web", "running": True, "instances": [{"name": "kv-1"}]})
    mark_down(paths)
    record = DeploymentRecord.load(paths)
    assert record is not None and record.controller_pid is None and record.down_at is not None
    assert read_json(paths.status) == {"name": "web", "running": False, "instances": []}
