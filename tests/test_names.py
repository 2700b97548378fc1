"""The agent's name table applying the coordinator's membership: a full Members, then deltas, and
what happens when a delta does not follow the version held (no sockets: NameTable is pure)."""

from __future__ import annotations

import ipaddress

from boxer.agent.ipc import Resolution
from boxer.agent.localnames import LocalNames, LocalNamesSource, parse_hosts, parse_nsswitch_hosts
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


# ---- names libc answers locally (issue 12 item 1) -------------------------------------------------

HOSTS = """# comment
127.0.0.1\tlocalhost
127.0.1.1   vm.example.org vm   # the machine
::1     localhost ip6-localhost ip6-loopback
10.9.9.9 KV-1 printer
"""


def with_local(nsswitch: str | None, hostname: str = "vm") -> NameTable:
    names = table()
    names.local = LocalNames.from_texts(HOSTS, nsswitch, hostname)
    return names


def test_hosts_file_names_and_nsswitch_sources_are_parsed():
    assert parse_hosts(HOSTS) == {"localhost", "vm.example.org", "vm", "ip6-localhost", "ip6-loopback",
                                  "kv-1", "printer"}
    assert parse_nsswitch_hosts("passwd: files\nhosts:  files mdns4_minimal [NOTFOUND=return] dns myhostname\n") \
        == ["files", "mdns4_minimal", "dns", "myhostname"]
    assert parse_nsswitch_hosts("hosts:files[!UNAVAIL=return]dns # x\n") == ["files", "dns"]
    assert parse_nsswitch_hosts("passwd: files\n") == ["dns", "files"]  # glibc's default


def test_files_before_dns_answers_hosts_names_before_the_overlay():
    names = with_local("hosts: files dns\n")
    for local in ("localhost", "ip6-localhost", "ip6-loopback", "printer", "vm", "LOCALHOST."):
        assert names.resolve(local) == (Resolution.PASS, ""), local
    assert names.resolve("kv-1") == (Resolution.PASS, "")  # /etc/hosts has it first
    assert names.resolve("kv-1.boxer") == (Resolution.FOUND, "100.64.0.7")  # explicitly ours
    assert names.resolve("kv-2") == (Resolution.FOUND, "100.64.0.8")
    assert names.resolve("nosuch") == (Resolution.NONAME, "")


def test_dns_before_files_answers_the_overlay_first_then_hosts_names():
    names = with_local("hosts: dns [!UNAVAIL=return] files\n")
    assert names.resolve("kv-1") == (Resolution.FOUND, "100.64.0.7")
    assert names.resolve("localhost") == (Resolution.PASS, "")
    assert names.resolve("nosuch") == (Resolution.NONAME, "")


def test_without_files_in_nsswitch_hosts_names_are_not_local_but_the_machine_name_is():
    names = with_local("hosts: dns\n", hostname="box7")
    assert names.resolve("printer") == (Resolution.NONAME, "")
    # The machine's real name: libc looks it up as it likes (plain, the overlay would not answer).
    assert names.resolve("box7") == (Resolution.PASS, "")


def test_myhostname_synthesizes_localhost_names():
    names = with_local("hosts: myhostname dns\n", hostname="box7")
    for local in ("localhost", "a.localhost", "_gateway", "box7"):
        assert names.resolve(local) == (Resolution.PASS, ""), local
    assert names.resolve("printer") == (Resolution.NONAME, "")  # no `files`: not libc's


def test_our_own_name_is_ours_even_when_the_hosts_file_lists_it():
    names = with_local("hosts: files dns\n", hostname="web-1")
    names.local = LocalNames.from_texts(HOSTS + "127.0.1.1 web-1\n", "hosts: files dns\n", "web-1")
    assert names.resolve("web-1") == (Resolution.FOUND, "100.64.0.3")
    assert names.resolve("web-1.boxer") == (Resolution.FOUND, "100.64.0.3")


def test_the_source_reads_the_files_again_when_they_change(tmp_path):
    hosts, nss = tmp_path / "hosts", tmp_path / "nsswitch.conf"
    hosts.write_text("127.0.0.1 localhost\n")
    source = LocalNamesSource(str(hosts), str(nss), hostname=lambda: "vm")
    first = source.current()
    assert first.files == {"localhost"} and not first.files_first  # no nsswitch.conf: glibc's default
    assert source.current() is first  # unchanged files: not parsed again
    nss.write_text("hosts: files dns\n")
    hosts.write_text("127.0.0.1 localhost\n10.0.0.5 db-primary\n")
    now = source.current()
    assert now.files == {"localhost", "db-primary"} and now.files_first
