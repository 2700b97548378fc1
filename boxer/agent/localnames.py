"""The names libc answers from the machine itself, and where they stand against the overlay.

Under `boxer run`, a name the app looks up goes to the agent first: single labels are overlay
names, answered authoritatively (an unknown one is EAI_NONAME). Yet some single labels are not
ours to answer: `localhost`, `ip6-localhost`, whatever /etc/hosts lists, the machine's own name.
Those must resolve exactly as without boxer, which means in the order the `hosts:` line of
/etc/nsswitch.conf gives. The overlay takes the place of `dns` there (it is the network's name
service); `files` (/etc/hosts) and `myhostname` (systemd's synthesized local names) answer before
it when they come before `dns` (the usual `files dns`), after it otherwise.

The parsers are pure; `LocalNamesSource` reads the files and reads them again when they change
(a container entrypoint may write /etc/hosts after the agent started).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

HOSTS_FILE = "/etc/hosts"
NSSWITCH_FILE = "/etc/nsswitch.conf"
# glibc's built-in hosts line when nsswitch.conf is missing (manual: "NSS Configuration File").
NSSWITCH_DEFAULT = ["dns", "files"]
# The sources that answer in place of `dns`, i.e. where the overlay's names stand.
_NETWORK_SOURCES = ("dns", "resolve")
# What nss-myhostname (and systemd-resolved, `resolve`) synthesize, besides the host's name.
_SYNTHESIZED = frozenset({"localhost", "localhost.localdomain", "_gateway", "_outbound"})


def parse_hosts(text: str) -> frozenset[str]:
    """Every name (canonical and aliases, lowercased) in a hosts(5) file."""
    names: set[str] = set()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        names.update(n.lower().rstrip(".") for n in fields[1:])
    return frozenset(names)


def parse_nsswitch_hosts(text: str) -> list[str]:
    """The sources of the first `hosts:` line, in order, without their [STATUS=action] items."""
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        database, sep, rest = line.partition(":")
        if sep and database.strip() == "hosts":
            sources: list[str] = []
            in_action = False
            for word in rest.replace("[", " [ ").replace("]", " ] ").split():
                if word == "[":
                    in_action = True
                elif word == "]":
                    in_action = False
                elif not in_action:
                    sources.append(word.lower())
            return sources
    return list(NSSWITCH_DEFAULT)


def _synthesized(name: str, hostname: str) -> bool:
    return name in _SYNTHESIZED or name == hostname or name.endswith((".localhost", ".localhost.localdomain"))


@dataclass(frozen=True)
class LocalNames:
    """Names answered locally (by libc), split by whether their source comes before the overlay
    (the `dns` position of nsswitch.conf) or after it."""

    files: frozenset[str] = frozenset()  # from /etc/hosts
    files_first: bool = True
    synthesized: bool = False  # `myhostname`/`resolve` is a source: it makes up localhost & co
    synthesized_first: bool = True
    hostname: str = ""  # the machine's real name (the agent's, not the overlay's)

    def before_overlay(self, name: str) -> bool:
        return (self.files_first and name in self.files) or (
            self.synthesized and self.synthesized_first and _synthesized(name, self.hostname))

    def after_overlay(self, name: str) -> bool:
        """Also the machine's own name, whatever the sources: libc looks it up as it likes (in
        DNS, with the search domains), and plain, the overlay would not have answered it."""
        return name in self.files or (self.synthesized and _synthesized(name, self.hostname)) or (
            bool(self.hostname) and name == self.hostname)

    @classmethod
    def from_texts(cls, hosts: str, nsswitch: str | None, hostname: str) -> LocalNames:
        sources = parse_nsswitch_hosts(nsswitch) if nsswitch is not None else list(NSSWITCH_DEFAULT)
        network = min((sources.index(s) for s in _NETWORK_SOURCES if s in sources), default=len(sources))

        def first(source: str) -> bool:
            return source in sources and sources.index(source) < network

        synthesizers = [s for s in ("myhostname", "resolve") if s in sources]
        return cls(
            files=parse_hosts(hosts) if "files" in sources else frozenset(),
            files_first=first("files"),
            synthesized=bool(synthesizers),
            synthesized_first=any(first(s) for s in synthesizers),
            hostname=hostname.lower().rstrip("."),
        )


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _stamp(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class LocalNamesSource:
    """`current()` gives the LocalNames of the files as they are now: two stat() calls per call,
    a re-read only when one changed (name lookups are cached by the interposer for a second)."""

    def __init__(self, hosts: str = HOSTS_FILE, nsswitch: str = NSSWITCH_FILE,
                 hostname: Callable[[], str] = socket.gethostname) -> None:
        self._hosts = hosts
        self._nsswitch = nsswitch
        self._hostname = hostname
        self._stamps: tuple[object, ...] | None = None
        self._names = LocalNames()

    def current(self) -> LocalNames:
        hostname = self._hostname()
        stamps = (_stamp(self._hosts), _stamp(self._nsswitch), hostname)
        if stamps != self._stamps:
            self._names = LocalNames.from_texts(_read(self._hosts) or "", _read(self._nsswitch), hostname)
            self._stamps = stamps
        return self._names
