"""``python -m lossproof.fallback {fallback,replay} ...``: the same commands as ``lossproof fallback``
and ``lossproof replay``, usable before (or without) their registration in ``lossproof.cli``."""

from __future__ import annotations

import sys

import click

from lossproof.fallback.main import fallback_command, replay_command


@click.group()
def main() -> None:
    """The fallback receiver and replay."""


main.add_command(fallback_command)
main.add_command(replay_command)

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
