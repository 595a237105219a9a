"""The fallback receiver (a separate, deliberately simple ingest into a local journal) and replay.

See ``docs/fallback.md``. It answers 200 only from the journal's durable receipt
(:class:`JournalReceipts`); it uses no log and no store. ``lossproof fallback`` / ``lossproof replay``
are :func:`fallback_command` / :func:`replay_command`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lossproof.lazy import exports

if TYPE_CHECKING:
    from lossproof.fallback.main import fallback_command as fallback_command
    from lossproof.fallback.main import replay_command as replay_command
    from lossproof.fallback.receiver import JournalReceipts as JournalReceipts
    from lossproof.fallback.receiver import ReceiverOptions as ReceiverOptions
    from lossproof.fallback.receiver import build_app as build_app
    from lossproof.fallback.receiver import serve as serve
    from lossproof.fallback.replay import Replay as Replay
    from lossproof.fallback.replay import ReplayOptions as ReplayOptions
    from lossproof.fallback.replay import run_replay as run_replay

# The public API, name -> the module that defines it, loaded on first use (lossproof.lazy).
__all__, __getattr__ = exports(
    __name__,
    {
        "fallback_command": "lossproof.fallback.main",
        "replay_command": "lossproof.fallback.main",
        "JournalReceipts": "lossproof.fallback.receiver",
        "ReceiverOptions": "lossproof.fallback.receiver",
        "build_app": "lossproof.fallback.receiver",
        "serve": "lossproof.fallback.receiver",
        "Replay": "lossproof.fallback.replay",
        "ReplayOptions": "lossproof.fallback.replay",
        "run_replay": "lossproof.fallback.replay",
    },
)
