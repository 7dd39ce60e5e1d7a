"""A long call streamed to the page: a thread runs it, its callback feeds a queue, a generator
drains the queue and yields what the page shows, then returns the call's result.

Nothing of the request is carried into the thread (no context copy): the call gets what it
needs as arguments. A generator closed before the call ends (the client went away) sets the
call's ``abandoned`` flag, which the call checks after every step, so no thread is left
working (or holding a lock) for a page that is gone.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


def stream(
    work: Callable[[Callable[[Any], None], threading.Event], T],
    show: Callable[[list], Any],
    poll: float = 0.5,
) -> Generator[Any, None, T]:
    """Run ``work(put, abandoned)`` in a thread; every ``poll`` seconds yield ``show(items put
    since the last yield)``; return what ``work`` returned or raise what it raised. Use with
    ``result = yield from stream(...)``. Once per ``poll``, not once per item: each yield costs
    the server a render of every output, under the same interpreter lock as the training."""
    updates: queue.Queue = queue.Queue()
    abandoned = threading.Event()
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, work(updates.put, abandoned)))
        except BaseException as e:  # noqa: BLE001  (handed to the generator, which raises it)
            outcome.append((False, e))
        finally:
            updates.put(_END)

    threading.Thread(target=run, name="ftedit-stream", daemon=True).start()
    try:
        while True:
            batch: list = []
            due = time.monotonic() + poll
            try:
                while (item := updates.get(timeout=max(0.0, due - time.monotonic()))) is not _END:
                    batch.append(item)
                break  # the call ended
            except queue.Empty:
                pass
            yield show(batch)
    finally:
        if not outcome:  # closed before the call ended: stop it at its next step
            abandoned.set()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
