"""What a Kafka commit vouches for, read back without a broker: the commit metadata and epoch
that let a reader find where a truncated log diverges, and older commits without them."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from lossproof.log.base import LogGap, LogRecord, PollResult
from lossproof.log.kafka.reader import Mark, committed_mark


def test_commit_metadata_round_trips() -> None:
    mark = Mark(99, 4, 1_700_000_000_123)
    tp = TopicPartition("t", 0, 100, mark.metadata(), 4)
    assert committed_mark(tp) == mark


def test_kip320_epoch_without_metadata_names_the_record_before_the_position() -> None:
    assert committed_mark(TopicPartition("t", 0, 100, leader_epoch=7)) == Mark(99, 7, -1)


def test_commit_by_an_older_version_has_no_mark() -> None:
    # No epoch and no metadata: the reader cannot check it (module doc: trusted at or below the
    # log end, the partition read again from its start above it).
    assert committed_mark(TopicPartition("t", 0, 100)) is None
    assert committed_mark(TopicPartition("t", 0, 100, "not json")) is None
    # Metadata naming a record at or past the position is not believed.
    assert committed_mark(TopicPartition("t", 0, 100, Mark(100, 1, 5).metadata())) is None


def test_a_reused_gap_is_never_a_position_to_commit() -> None:
    res = PollResult(
        records=[LogRecord(0, 60, b"k", b"v", 1)],
        gaps=[LogGap(0, 60, 99, "truncated", 1, reused=True), LogGap(1, 5, 9, "deleted", 1)],
    )
    assert res.next_offsets() == {0: 61, 1: 10}
