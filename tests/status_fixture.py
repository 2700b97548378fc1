"""A status.json as the controller writes it (controller/runtime.py status()): web on vm, api
scaled on function with a crash-looping slot, for the golden tests of `boxer status` and top."""

from __future__ import annotations

import copy
from typing import Any

NOW = 1_780_000_900.0


def _instance(service: str, name: str, index: int, **changes: Any) -> dict[str, Any]:
    row = {
        "service": service, "name": name, "id": f"{service}-{index}-1", "instance_id": f"{index:02d}ab34cd56ef7788",
        "state": "ready", "placement": "function", "address": f"100.64.0.{index + 1}",
        "host": f"h{index}", "pid": 4000 + index, "connections": 7, "cpu": 12.345678, "rss": 31_457_280,
        "listening": [8080], "direct": 12, "relayed": 0, "accepted": 40,
        "started_at": NOW - 899.6, "age": 899.6, "ready_after": 0.41234, "lifetime_left": 0.4,
        "exit_status": None, "error": None, "revision": 1, "restarts": 0,
    }
    row.update(changes)
    return row


STATUS: dict[str, Any] = {
    "name": "web-autoscale", "backend": "local", "file": "/srv/web/deploy.yaml", "pid": 3999,
    "lab": "webautosd", "deployment": "web-autoscale", "updated_at": NOW, "started_at": NOW - 900.2,
    "running": True, "coordinator": "198.18.0.1:7000", "connected": True, "error": None,
    "register_timeout": 30.0, "backend_status": None, "failures": [
        {"at": NOW - 4.0, "name": "api-3", "service": "api", "instance_id": "03ab", "reason": "exited with status 1",
         "exit_status": 1, "then": "crash loop: started again in 4 s (back-off)",
         "last_log": ["Traceback (most recent call last):", "KeyError: 'DELAY_MS'"], "restarts": 2, "retry_in": 4.0},
    ],
    "partition": {"mode": "normal", "quiet": 0, "held": 0, "lost": 0, "instances": 4, "reason": None},
    "services": {
        "api": {"placement": "function", "min": 0, "max": 40, "autoscale": {"metric": "activeConnections", "target": 10.0},
                "desired": 3, "address": "100.64.0.20", "load": 14.000000001, "pending": False, "revision": 1, "outdated": 0},
        "web": {"placement": "vm", "min": 1, "max": 1, "autoscale": None, "desired": 1, "address": "100.64.0.21",
                "load": 0.0, "pending": False, "revision": 1, "outdated": 0},
    },
    "instances": [
        _instance("api", "api-1", 1, age=59.7, started_at=NOW - 59.7, lifetime_left=840.3),
        _instance("api", "api-2", 2, state="starting", address=None, connections=0, cpu=0.0, ready_after=None,
                  age=4.087000000001, lifetime_left=895.9),
        {"service": "api", "name": "api-3", "id": None, "instance_id": None, "state": "backoff",
         "placement": "function", "address": None, "host": None, "pid": None, "connections": 0, "cpu": 0.0,
         "rss": 0, "listening": [], "direct": 0, "relayed": 0, "accepted": 0, "started_at": None, "age": None,
         "ready_after": None, "lifetime_left": None, "exit_status": 1, "error": "exited with status 1",
         "revision": None, "restarts": 2, "next_try": NOW + 3.6, "next_try_in": 3.6,
         "last_log": ["KeyError: 'DELAY_MS'"]},
        _instance("web", "web-1", 4, placement="vm", host="p1", address="100.64.0.5", lifetime_left=None,
                  age=3725.0, started_at=NOW - 3725.0, connections=14, relayed=2),
    ],
}


def status(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(STATUS)
    data.update(changes)
    return data
