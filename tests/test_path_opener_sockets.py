"""Every socket a path race opened is closed when the race ends, the loser's included, even when
it opened in the same instant as the race was decided (found by the 900-connection lab test:
the server's agent kept about one relay socket in a hundred connections whose relay started
after the 0.25 s relay delay). The real PathOpener and PathRace run; only the two paths'
network opening is played here (`_run_path`), with real sockets, so that the order of the
events is the one that leaked: the direct path opened and proven, the relay opened right
after, before the race's loop took the direct path's news."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

from boxer.agent.inbox import Inbox
from boxer.agent.paths import PathOpener
from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.client import Path, Timeouts

SECRET = bytes(range(32))
CONN, SALT = "c0ffee01", "5a170001"
KEY = auth.connection_key(SECRET, CONN, SALT)
TOKEN = auth.instance_token(SECRET, "1111aaaa")


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one TCP connection on loopback (the race sets TCP options on the winner)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ours = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    return ours, peer


class ScriptedPaths(PathOpener):
    """The relay's connect completes in the very step the direct path's proof is verified."""

    def __init__(self) -> None:
        super().__init__(lambda: ("127.0.0.1", 9), TOKEN, Timeouts(punch=2.0, relay_delay=0.0), Counter())
        self.opened: dict[Path, socket.socket] = {}
        self.peers: list[socket.socket] = []
        self._relay_may_open = asyncio.Event()

    async def _run_path(self, path: Path, punch: m.Punch, key: bytes, local_port: int,
                        relay: tuple[str, int] | None, deadline: float, events: Inbox) -> None:
        ours, peer = tcp_pair()
        ours.setblocking(False)
        self.opened[path], _ = ours, self.peers.append(peer)
        if path is Path.RELAY:
            await self._relay_may_open.wait()
            events.put_nowait(("opened", path, (ours, 1)))
            return
        while Path.RELAY not in self.opened:  # both paths under way, as after the relay delay
            await asyncio.sleep(0)
        # Wakes the relay's task before the race's loop (scheduled by the next put).
        self._relay_may_open.set()
        events.put_nowait(("opened", path, (ours, 1)))
        events.put_nowait(("proven", path, None))


def test_a_path_that_opens_as_the_race_is_won_is_closed() -> None:
    opener = ScriptedPaths()
    punch = m.Punch(conn=CONN, role="server", peer="127.0.0.1:9", ticket="aaaa0001",
                    wrapped_key=auth.wrap_connection_key(TOKEN, KEY, CONN, SALT).hex(), salt=SALT)

    async def race() -> tuple[socket.socket, Path]:
        won = await opener.open(punch, 0)
        await asyncio.sleep(0.05)  # the losing task's cancellation runs
        return won

    sock, path = asyncio.run(race())
    try:
        assert path is Path.DIRECT
        assert sock is opener.opened[Path.DIRECT] and sock.fileno() != -1
        assert opener.opened[Path.RELAY].fileno() == -1, "the relay socket that opened as the race was won leaked"
    finally:
        sock.close()
        for peer in opener.peers:
            peer.close()
