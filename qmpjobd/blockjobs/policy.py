"""Error policies: what a block job does when one of its I/O requests fails.

``on-source-error`` / ``on-target-error`` take QEMU's BlockdevOnError values.
``report`` fails the job, ``ignore`` retries, ``stop`` pauses the job (it
retries the failed request once resumed), and ``enospc`` / ``auto`` stop on
ENOSPC and report anything else.

Must not import: sockets, JSON.
"""

from __future__ import annotations

import errno as errno_mod
from typing import Literal, get_args

from ..jobs import ErrorAction

OnError = Literal["report", "ignore", "enospc", "stop", "auto"]
ON_ERROR_VALUES: tuple[str, ...] = get_args(OnError)


def error_action(policy: OnError, errno: int) -> ErrorAction:
    """The action ``policy`` takes for a request that failed with ``errno``."""
    match policy:
        case "enospc" | "auto":
            return "stop" if errno == errno_mod.ENOSPC else "report"
        case "stop":
            return "stop"
        case "ignore":
            return "ignore"
        case "report":
            return "report"
