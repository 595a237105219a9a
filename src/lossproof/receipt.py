"""The durable receipt: what every 2xx that acknowledges data is made from, and nothing else.

The contract's first rule ("acknowledged means durable") holds by construction, not by convention:

* only a durable writer (a :class:`ReceiptIssuer`: the log's writers, the fallback receiver's journal)
  issues a :class:`Receipt`, and only once the data is durable: the position it landed at, plus the
  seqs it holds;
* a :class:`Receipt` is not made any other way by mistake: its constructor refuses a caller
  without the issuer's key, and it cannot be copied, unpickled or altered into another. (This guards
  against mistakes in our own code, not against deliberate forging: Python cannot stop
  ``object.__new__``.)
* the ingest API checks, as soon as the writer returns, that the receipt covers at least one record
  (:func:`covers_a_record`): a writer that answers "nothing kept" for data is a 5xx, never a 2xx;
* the ingest API and the fallback receiver build their 2xx from one (:func:`acked`): there is no
  other way to answer OK, for the native protocol, the third-party protocols or the fallback.

A request that carries nothing to keep (a remote-write request with neither samples nor metadata)
gets :func:`nothing_to_keep`: a receipt for zero records and zero seqs, which acknowledges nothing.

A test wrapper that lies (chaos: the first post-mortem's early acknowledgement) must itself be a
writer that issues receipts: the lie sits in a writer handed in by the test, never in a branch of
the ingest path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import InitVar, dataclass

_KEY = object()  # held by ReceiptIssuer alone


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where a durable write landed (``partition``/``offset``: the log's partition and offset, or the
    fallback journal's segment and position) and the seq ranges it holds (``[first, last]``)."""

    source: str  # "log", "fallback journal", or "nothing" (nothing_to_keep)
    partition: int
    offset: int
    seqs: tuple[tuple[int, int], ...] = ()
    records: int = 1
    # not a field: dataclasses.replace cannot copy it, so a receipt cannot be altered into another
    _key: InitVar[object] = None

    def __post_init__(self, _key: object) -> None:
        if _key is not _KEY:
            raise TypeError("a Receipt is issued only by a durable writer (ReceiptIssuer), once durable")

    # One receipt per durable write: not copied, pickled or restored into another.
    def __copy__(self) -> Receipt:
        return self

    def __deepcopy__(self, memo: object) -> Receipt:
        return self

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Receipt cannot be pickled: it is issued once, by a durable writer")

    def __setstate__(self, state: object) -> None:
        raise TypeError("a Receipt cannot be restored from a state: it is issued once, by a durable writer")


class ReceiptIssuer:
    """What makes data durable and says so: the only maker of :class:`Receipt` (via :meth:`_receipt`)."""

    receipt_source = "log"

    def _receipt(self, partition: int, offset: int, seqs: Iterable[tuple[int, int]] = ()) -> Receipt:
        return Receipt(
            self.receipt_source, partition, offset, tuple((int(a), int(b)) for a, b in seqs), 1, _KEY
        )


def nothing_to_keep() -> Receipt:
    """The receipt of a request with nothing to keep: no record, no seq; it acknowledges nothing."""
    return Receipt("nothing", -1, -1, (), 0, _KEY)


def checked(receipt: object) -> Receipt:
    """``receipt`` if it is a genuine :class:`Receipt`; a TypeError (so a 500, never a 2xx) otherwise."""
    if type(receipt) is not Receipt:  # a subclass could skip the check in __post_init__
        raise TypeError(f"an acknowledgement needs a durable writer's Receipt, not {type(receipt).__name__}")
    return receipt


def covers_a_record(receipt: object) -> Receipt:
    """``receipt`` if it is genuine and holds at least one durable record (what a writer returns for
    an append); a TypeError otherwise, so the request gets a 5xx, never a 2xx."""
    got = checked(receipt)
    if got.records < 1 or got.source == "nothing":
        raise TypeError(f"an append's receipt holds {got.records} records ({got.source}): nothing durable")
    return got


def acked(receipt: object) -> list[list[int]]:
    """The ``acked`` field of a native 200: the seq ranges the receipt holds, and nothing else."""
    return [[a, b] for a, b in checked(receipt).seqs]
