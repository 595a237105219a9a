"""Child processes that die with their parent."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For ``preexec_fn`` (or a child's first call): the kernel sends SIGKILL to this process when
    its parent exits, so a kill -9 of the parent leaves no orphan holding a port, the log or the
    store."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: children are still stopped on clean exits
