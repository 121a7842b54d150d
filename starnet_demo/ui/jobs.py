"""Long work that a Gradio generator handler watches, so that a cancel or a lost client stops it.

Gradio stops a generator handler at its next ``yield`` (a cancel, or the client gone) by closing it; a plain handler
runs to its end in a thread nobody can stop. So the handler starts the work on a ``Job`` thread, yields while it
runs, and the ``with`` block's exit, which a close reaches too, sets the job's ``stop`` event and waits for the
thread to end: the work checks ``stop`` at every frame, and the request's concurrency slot is not handed on while its
work still runs.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Job(Generic[T]):
    """``with Job(work) as job: while job.running(): yield …`` then ``job.result()``.

    ``work(stop)`` runs on its own thread, in a copy of the caller's context (so Gradio's ``gr.Warning`` and
    progress reach the request), and should return soon after ``stop`` is set.
    """

    def __init__(self, work: Callable[[threading.Event], T], name: str = "job"):
        self.stop = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run, work), name=name, daemon=True)

    def _run(self, work: Callable[[threading.Event], T]) -> None:
        try:
            self._value = work(self.stop)
        except BaseException as e:  # re-raised by result(), on the handler's thread
            self._error = e

    def __enter__(self) -> Job[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self._thread.join()

    def running(self, wait_s: float = 0.25) -> bool:
        """Whether the work is still running, after waiting up to ``wait_s`` for it to end."""
        self._thread.join(wait_s)
        return self._thread.is_alive()

    def result(self) -> T:
        """The work's return value, or its exception raised again."""
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
