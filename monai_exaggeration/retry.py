"""Retries with exponential back-off: one helper, and one set of defaults, for the PACS export and the DICOM node.

The export (``export``, the inference's ``--export true``, the node's sending) retries a transient
failure of one instance or query :data:`RETRIES` times, after :data:`BACKOFF_S`, twice that, ...
seconds. The node's queue spaces the attempts of a failed job the same way
(:func:`backoff_delay`, with its own ``queue.backoff_s`` and a ceiling).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["BACKOFF_S", "RETRIES", "backoff_delay", "retry"]

T = TypeVar("T")

#: Retries of a transient failure (connection refused, no answer, status 0xA7xx, HTTP 5xx) ...
RETRIES = 3
#: ... the first after this many seconds, each next one after twice the delay before.
BACKOFF_S = 0.5


def backoff_delay(attempt: int, first: float, limit: float | None = None) -> float:
    """The wait before retry ``attempt`` (0 for the first): ``first * 2**attempt``, at most ``limit``."""
    delay = first * 2 ** max(0, attempt)
    return delay if limit is None else min(limit, delay)


def retry(
    call: Callable[[], T],
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    transient: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """``call()``; while it raises ``transient``, wait and call again (``retries`` times at most).

    The waits are :func:`backoff_delay`: ``backoff``, twice that, ... ``on_retry(error, delay)`` is
    told before each wait (to log it). The error of the last call is raised.
    """
    for attempt in range(max(0, retries)):
        try:
            return call()
        except transient as error:
            delay = backoff_delay(attempt, backoff)
            if on_retry is not None:
                on_retry(error, delay)
            time.sleep(delay)
    return call()
