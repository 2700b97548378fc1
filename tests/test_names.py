"""The agent's name table applying the coordinator's membership: a full Members, then deltas, and
what happens when a delta does not follow the version held (no sockets: NameTable is pure)."""

from __future__ import annotations

import ipaddress

from boxer.agent.ipc import Resolution
from boxer.agent.names import DeltaOutcome, NameTable
from boxer.nat_traversal import messages as m


def table(version: int | None = 4) -> NameTable:
    names = NameTable(ipaddress.IPv4Network("100.64.0.0/10"), "web-1", "100.64.0.3")
    names.update({"kv-1": "100.64.0.7", "kv-2": "100.64.0.8"}, {"kv": "100.127.255.254"}, version)
    return names


def delta(base: int, version: int, hosts=None, gone=(), services=None) -> m.MembersDelta:
    return m.MembersDelta(base=base, version=version, hosts=hosts or {}, gone=list(gone), services=services or {})


def test_a_delta_from_the_version_held_is_applied():
    names = table()
    outcome = names.apply_delta(delta(4, 5, hosts={"db-1": "100.64.0.9", "kv-2": "100.64.0.10"}, gone=["kv-1"],
                                      services={"db": "100.127.255.253"}))
    assert outcome is DeltaOutcome.APPLIED and names.version == 5
    assert names.members == {"web-1": "100.64.0.3", "kv-2": "100.64.0.10", "db-1": "100.64.0.9"}
    assert names.services == {"kv": "100.127.255.254", "db": "100.127.255.253"}
    assert names.resolve("kv-1") == (Resolution.NONAME, "")
    assert names.resolve("db") == (Resolution.FOUND, "100.127.255.253")


def test_our_own_name_survives_any_delta():
    names = table()
    names.apply_delta(delta(4, 5, gone=["web-1"]))
    names.apply_delta(delta(5, 6, hosts={"web-1": "100.64.0.99"}))
    assert names.resolve("web-1") == (Resolution.FOUND, "100.64.0.3")


def test_a_gap_is_not_applied_and_asks_once_for_the_full_membership():
    names = table()
    before = dict(names.members)
    assert names.apply_delta(delta(5, 6, hosts={"db-1": "100.64.0.9"})) is DeltaOutcome.GAP
    assert names.members == before and names.version is None
    # Deltas already on their way are ignored without asking again ...
    assert names.apply_delta(delta(6, 7, gone=["kv-2"])) is DeltaOutcome.WAITING
    assert names.apply_delta(delta(4, 5)) is DeltaOutcome.WAITING
    assert names.members == before  # still answering from what we had meanwhile
    # ... until the full Members comes; its deltas then apply again.
    names.update({"kv-1": "100.64.0.7", "db-1": "100.64.0.9"}, {"kv": "100.127.255.254"}, 7)
    assert names.apply_delta(delta(7, 8, gone=["kv-1"])) is DeltaOutcome.APPLIED
    assert names.members == {"web-1": "100.64.0.3", "db-1": "100.64.0.9"}


def test_a_table_without_a_version_asks_for_the_full_membership():
    names = table(version=None)
    assert names.apply_delta(delta(0, 1)) is DeltaOutcome.GAP


def test_a_second_gap_after_recovery_asks_again():
    names = table()
    assert names.apply_delta(delta(9, 10)) is DeltaOutcome.GAP
    names.update({}, {}, 10)
    assert names.apply_delta(delta(11, 12)) is DeltaOutcome.GAP
