"""Development helpers: local services for trying lossproof and for its tests."""

from lossproof.dev.kafka import dev_group

__all__ = ["dev_group"]
