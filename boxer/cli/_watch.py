"""A running deployment's newest status, kept up to date by the control API's Watch stream (the
controller sends one after every tick) in a thread of its own: `boxer top` redraws on its own
clock and reads whatever came last, with no call per frame."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["LatestStatus"]


class LatestStatus:
    def __init__(self, client: Any, first: dict[str, Any] | None = None) -> None:
        """`client`: a ControlClient of the deployment (closed by close())."""
        self.status = first
        self.ended = threading.Event()  # the stream broke: the controller went (or never answered)
        self._client = client
        self._thread = threading.Thread(target=self._follow, name="boxer-watch", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        from boxer.controller.api.client import ControlError

        try:
            for status in self._client.watch():
                self.status = status
        except ControlError:
            pass
        finally:
            self.ended.set()

    def close(self) -> None:
        self._client.close()  # cancels the stream: the thread ends
        self._thread.join(2.0)
