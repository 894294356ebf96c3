"""What a peer answered for one instance, and the two kinds of errors a sender raises.

:class:`TransientSendError` is worth retrying (connection refused or reset, association aborted,
timeout, "out of resources", HTTP 5xx; :class:`UnreachableError` when no connection can be made at
all); :class:`PermanentSendError` is not (association rejected,
e.g. a wrong called AE title; HTTP 401/403), nor is :class:`QueryError` (the peer will not answer
the queries of ``export --verify``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "WARNING_STATUSES",
    "PermanentSendError",
    "QueryError",
    "SendResult",
    "TransientSendError",
    "UnreachableError",
    "classify_status",
]

#: Warning statuses of C-STORE (PS3.4 B.2.3): the instance is stored.
WARNING_STATUSES = {
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
}

_FAILURES = {
    0x0110: "processing failure",
    0x0117: "invalid SOP instance",
    0x0122: "refused: SOP class not supported",
    0x0124: "refused: not authorized",
    0x0211: "unrecognized operation",
    0x0212: "mistyped argument",
}


class TransientSendError(RuntimeError):
    """Worth retrying later (network, peer busy)."""


class UnreachableError(TransientSendError):
    """The peer cannot be reached at all (refused, unknown host, no association): if retries do not help,
    the export stops instead of trying every remaining instance."""


class PermanentSendError(RuntimeError):
    """A retry cannot help (rejected association, misconfiguration)."""


class QueryError(PermanentSendError):
    """The destination cannot be asked which instances it holds (C-FIND refused or unsupported, QIDO-RS refused)."""


@dataclass(frozen=True)
class SendResult:
    """The peer's answer for one instance: ``result`` is sent, warning or failed; ``status`` -1 = no answer."""

    result: str
    status: int
    message: str = ""

    @property
    def stored(self) -> bool:
        """True when the peer keeps the instance (success or a warning status)."""
        return self.result in ("sent", "warning")

    @property
    def status_hex(self) -> str:
        """The status as ``0xXXXX`` ("" when the peer never answered)."""
        return f"0x{self.status:04X}" if self.status >= 0 else ""


def classify_status(status: int) -> SendResult:
    """C-STORE status code -> result (PS3.4 Annex B, PS3.7 Annex C)."""
    if status == 0x0000:
        return SendResult("sent", status)
    if status in WARNING_STATUSES:
        return SendResult("warning", status, f"stored with warning: {WARNING_STATUSES[status]}")
    if 0xA700 <= status <= 0xA7FF:
        return SendResult("failed", status, "refused: out of resources")
    if 0xA900 <= status <= 0xA9FF:
        return SendResult("failed", status, "error: data set does not match SOP class")
    if 0xC000 <= status <= 0xCFFF:
        return SendResult("failed", status, "error: cannot understand")
    return SendResult("failed", status, _FAILURES.get(status, "failed"))
