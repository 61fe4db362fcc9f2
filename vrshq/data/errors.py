"""The one exception type raised for bad input data (missing, corrupt or inconsistent files).

Pipelines catch :class:`DataError` per video or expression, write a row to the errors table
(``schemas.ERRORS_SCHEMA``: ``uri`` + ``message``) and go on with the rest, so the error carries
the offending file separately from the human-readable reason.
"""
from __future__ import annotations

__all__ = ["DataError"]


class DataError(Exception):
    """Input data that cannot be used as it is: the message names the file and the problem.

    Attributes:
        uri: the offending file or folder (local path or ``s3://...`` URI).
        reason: what is wrong with it, without the URI.
    """

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = str(uri)
        self.reason = str(reason)
        super().__init__(f"{self.uri}: {self.reason}")

    def __reduce__(self):  # keep uri/reason through pickling (Ray moves exceptions between processes)
        return (type(self), (self.uri, self.reason))
