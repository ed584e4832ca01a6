"""Storage errors, classified by what the caller should do about them.

The loader retries a :class:`RetryableError` (the server or its keeper is
away for a while, and a retried load is deduplicated) and stops on a
:class:`FatalError` (the statement itself is wrong: retrying cannot help, and
retrying forever would hide it). Lenses answer 503 for either kind of
unavailability, naming the shards they could not read.
"""

from __future__ import annotations

import re

# ClickHouse error codes that a retry can outlive: the network, a replica or
# the keeper session coming back, a merge catching up.
RETRYABLE_CODES = {
    159,  # TIMEOUT_EXCEEDED
    164,  # READONLY (a replica without its keeper session refuses writes)
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    225,  # NO_ZOOKEEPER
    242,  # TABLE_IS_READ_ONLY
    252,  # TOO_MANY_PARTS
    279,  # ALL_CONNECTION_TRIES_FAILED
    285,  # TOO_FEW_LIVE_REPLICAS (insert quorum)
    286,  # UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
    319,  # UNKNOWN_STATUS_OF_INSERT (quorum timeout: a retry is deduplicated)
    999,  # KEEPER_EXCEPTION (session loss)
    1000,  # POCO_EXCEPTION (connection reset inside the server)
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    203,  # NO_FREE_CONNECTION
    236,  # ABORTED
    241,  # MEMORY_LIMIT_EXCEEDED
    394,  # QUERY_WAS_CANCELLED
    439,  # CANNOT_SCHEDULE_TASK
    425,  # SYSTEM_ERROR
}


class StorageError(RuntimeError):
    """A query or insert the storage refused or could not run."""

    code: int | None = None
    network: bool = False  # the server was not reached (or went silent)


class RetryableError(StorageError):
    """The storage is unavailable for now; the same call may succeed later."""


class FatalError(StorageError):
    """The storage refused the statement itself; retrying cannot help."""


class ShardUnavailable(RetryableError):
    """No replica of some shards answered."""

    def __init__(self, shards: list[str], cause: str) -> None:
        self.shards = shards
        super().__init__(f"shard {', '.join(shards)} unavailable: {cause}")


_CODE = re.compile(r"Code:\s*(\d+)")


def classify(message: str, code: int | None = None, network: bool = False) -> StorageError:
    """The error for a failure ClickHouse (or the link to it) reported.

    ``network`` marks a failure to reach the server at all; otherwise the
    error code decides, read from ``message`` when not given."""
    if code is None:
        m = _CODE.search(message)
        code = int(m.group(1)) if m else None
    kind = RetryableError if network or code in RETRYABLE_CODES else FatalError
    err = kind(message)
    err.code = code
    err.network = network or code in (209, 210)
    return err
