"""The agent's reports to the coordinator (for the controller): every second once the app runs,
at once when something the controller waits on changes, and soon after connections are handed
to the app (the controller scales on their count)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from boxer.agent.link import CoordinatorLink, LinkDown
from boxer.agent.signals import ProcessSampler, open_local_ports
from boxer.agent.tasks import Tasks
from boxer.nat_traversal import messages as m

# A report sooner than the next second when connections are handed to the app (the controller
# scales on their count, and a load step should not wait a second to be seen), at most this often.
EARLY_REPORT_GAP = 0.2

Sample = tuple[set[int] | None, float, int]  # open local ports (None: unknown), cpu %, rss bytes
Build = Callable[[Sample, int | None], m.Report]


class Reporter:
    def __init__(self, link: CoordinatorLink, tasks: Tasks, build: Build, interval: float) -> None:
        self.link = link
        self.tasks = tasks
        self.build = build
        self.interval = interval
        self.sampler: ProcessSampler | None = None
        self._last = 0.0  # time.monotonic() of the last report sent
        self._early: asyncio.TimerHandle | None = None

    @property
    def attached(self) -> bool:
        return self.sampler is not None

    def attach(self, pid: int) -> None:
        """The app is running: sample it and report every `interval` seconds."""
        self.sampler = ProcessSampler(pid)
        self.tasks.spawn(self._forever())

    def sample(self) -> Sample:
        try:
            live = open_local_ports()
        except OSError:
            live = None
        cpu, rss = self.sampler.sample() if self.sampler else (0.0, 0)
        return live, cpu, rss

    def soon(self) -> None:
        """A connection was handed to the app: report soon (coalesced, EARLY_REPORT_GAP apart)."""
        if self.sampler is None or self._early is not None or self.tasks.closed:
            return
        delay = max(0.0, self._last + EARLY_REPORT_GAP - time.monotonic())
        self._early = asyncio.get_running_loop().call_later(delay, self._send_early)

    def now(self) -> None:
        """Something the controller waits on changed (listening, a drain taken): report now."""
        if self.sampler is not None and not self.tasks.closed:
            self.tasks.spawn(self.send())

    def _send_early(self) -> None:
        self._early = None
        if not self.tasks.closed:
            self.tasks.spawn(self.send())

    async def send(self, exited: int | None = None) -> None:
        # Sampling (sock_diag, a few /proc files) is cheap now, but a busy app's process tree or
        # thousands of sockets still take a while: in a thread, not on the connect path's loop.
        self._last = time.monotonic()
        sample = await asyncio.to_thread(self.sample)
        try:
            await self.link.send(self.build(sample, exited), wait=0.0)
        except LinkDown:
            pass  # the next report, after reconnection, tells the same story

    async def _forever(self) -> None:
        while not self.tasks.closed:
            await self.send()
            await asyncio.sleep(self.interval)

    def close(self) -> None:
        if self._early is not None:
            self._early.cancel()
