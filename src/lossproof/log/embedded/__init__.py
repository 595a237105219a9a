"""The embedded log: segment files on local disk with group-commit fsync (the default backend)."""

from lossproof.log.embedded.reader import EmbeddedLogReader
from lossproof.log.embedded.writer import EmbeddedLogWriter

__all__ = ["EmbeddedLogReader", "EmbeddedLogWriter"]
