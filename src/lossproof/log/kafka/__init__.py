"""The Kafka log backend: an existing (or `lossproof dev kafka`) cluster, idempotent acks=all producer,
one consumer group per worker pool. See docs/kafka.md."""

from lossproof.log.kafka.common import KafkaTopicUnsafe
from lossproof.log.kafka.reader import KafkaLogReader
from lossproof.log.kafka.writer import KafkaLogWriter

__all__ = ["KafkaLogReader", "KafkaLogWriter", "KafkaTopicUnsafe"]
