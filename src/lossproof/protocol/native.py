"""The native agent protocol (``POST /v1/reports``), see ``docs/protocol.md``.

Decoding and type validation happen in msgspec's C code: a request is checked field by field
without a Python loop over points, which keeps the ingest hot path cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import msgspec

from lossproof.native_ext import _native
from lossproof.points import same_report
from lossproof.ranges import from_seqs

# 1970 .. 2100 in unix ms: anything outside is a unit mistake (seconds, ns), not telemetry.
MAX_TIME_MS = 4_102_444_800_000
TimeMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_MS)]
# A point's time from before 1973-03-03 (1e11 ms) is far more likely seconds than a real sample:
# today in seconds is ~1.8e9, which as milliseconds lands on 1970-01-21. Refused, so it is never
# stored silently in 1970. (Checked at ingest only; the worker decodes without constraints, so
# records acknowledged before this check was added are still stored.)
MIN_POINT_TIME_MS = 100_000_000_000
PointTimeMs = Annotated[int, msgspec.Meta(ge=MIN_POINT_TIME_MS, le=MAX_TIME_MS)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]  # = MAX_INT
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


# gc=False: a request allocates thousands of these; they never form cycles, and keeping them out
# of the cyclic GC's bookkeeping makes validation about a third cheaper.
class PointIn(msgspec.Struct, gc=False):
    metric: Name
    t: PointTimeMs
    v: float
    labels: Annotated[
        dict[Name, Annotated[str, msgspec.Meta(max_length=4096)]], msgspec.Meta(max_length=64)
    ] = {}


class ReportIn(msgspec.Struct, gc=False):
    seq: Seq
    points: list[PointIn]
    time: TimeMs = 0


class DroppedIn(msgspec.Struct):
    """Seqs the agent gave up on without an acknowledgement, and why (e.g. ``spool_full``)."""

    first: Seq
    last: Seq
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


# Every integer is bounded by what the stores hold (SQLite INTEGER, PostgreSQL bigint: int64): a
# larger one would be acknowledged, then refused by the store and dead-lettered.
MAX_INT = 2**63 - 1
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]


class SpoolIn(msgspec.Struct):
    """The agent's spool when it built the request: what is still pending is delayed, not lost."""

    pending_reports: Count
    pending_bytes: Count
    oldest_pending_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_MS)]
    first_pending_seq: Count
    last_seq: Count


# An agent's incarnation: a random id it creates with its spool (see docs/protocol.md). Printable
# ASCII without spaces, so it can be shown and typed as it is. ``\Z``, not ``$``: msgspec searches
# with Python's re, whose ``$`` also matches before a final newline ("abc\n" passed).
Incarnation = Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[!-~]*\Z")]


class RequestIn(msgspec.Struct):
    agent: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    reports: list[ReportIn]
    dropped: list[DroppedIn] = []
    spool: SpoolIn | None = None
    # "" (absent): an agent without incarnations; all its seqs share one seq space forever.
    incarnation: Incarnation = ""
    # Where this incarnation's seq space starts: an agent that starts a new incarnation without
    # renumbering the reports it still holds names its lowest one.
    first_seq: Seq = 1


_json = msgspec.json.Decoder(RequestIn)
_msgpack = msgspec.msgpack.Decoder(RequestIn)

JSON = "application/json"
MSGPACK = "application/msgpack"
CONTENT_TYPES = {JSON: JSON, MSGPACK: MSGPACK, "application/x-msgpack": MSGPACK}


class BadRequest(Exception):
    """Malformed input; the message says what is wrong and where."""


def decode(body: bytes, content_type: str) -> RequestIn:
    try:
        req = _msgpack.decode(body) if content_type == MSGPACK else _json.decode(body)
    except msgspec.ValidationError as e:
        raise BadRequest(_explain(str(e))) from None
    except msgspec.DecodeError as e:
        raise BadRequest(f"malformed {content_type.split('/')[-1]}: {e}") from None
    except UnicodeDecodeError as e:
        raise BadRequest(f"invalid UTF-8 in a string at byte {e.start}") from None
    except RecursionError:
        # msgspec decodes nested arrays/objects (also in an unknown field) recursively
        raise BadRequest(f"malformed {content_type.split('/')[-1]}: nested too deeply") from None
    if not req.reports and not req.dropped and req.spool is None:
        raise BadRequest(
            "nothing to do: `reports` is empty and there is no `dropped` or `spool` - at `$.reports`"
        )
    seqs = [r.seq for r in req.reports]
    if len(set(seqs)) != len(seqs):
        _check_duplicates(req.reports, seqs)
    # Identifiers and reasons become text columns, and PostgreSQL text cannot hold NUL.
    if "\x00" in req.agent:
        raise BadRequest("NUL character in the agent id - at `$.agent`")
    for i, d in enumerate(req.dropped):
        if d.first > d.last:
            raise BadRequest(f"first > last - at `$.dropped[{i}]`")
        if "\x00" in d.reason:
            raise BadRequest(f"NUL character in the reason - at `$.dropped[{i}].reason`")
    if req.spool is not None:
        check_spool(req.spool)
    return req


def check_spool(sp: SpoolIn) -> None:
    """What :func:`decode` refuses in a spool beyond its types (BadRequest)."""
    if sp.last_seq and sp.first_pending_seq > sp.last_seq:
        # The lowest pending seq cannot be above the highest seq the agent ever created.
        raise BadRequest(
            f"first_pending_seq {sp.first_pending_seq} > last_seq {sp.last_seq} - at "
            "`$.spool.first_pending_seq`"
        )


_TOO_EARLY = f"Expected `int` >= {MIN_POINT_TIME_MS} - at "


def _explain(message: str) -> str:
    """msgspec's message, with the likely reason when a point's time is too small."""
    if message.startswith(_TOO_EARLY):
        where = message.removeprefix(_TOO_EARLY)
        return (
            f"t must be unix milliseconds >= {MIN_POINT_TIME_MS} (1973-03-03): a smaller t is most "
            f"likely in seconds (multiply by 1000) - at {where}"
        )
    return message


_report_enc = msgspec.msgpack.Encoder()


def _check_duplicates(reports: list[ReportIn], seqs: list[int]) -> None:
    """Reports are stored once per seq: of two different reports with one seq, one would be
    dropped after the 200. The same report twice (a resend; compared encoded, so NaN equals NaN) is
    harmless and accepted."""
    first: dict[int, int] = {}
    for i, seq in enumerate(seqs):
        j = first.setdefault(seq, i)
        if j != i and _report_enc.encode(reports[j]) != _report_enc.encode(reports[i]):
            raise BadRequest(
                f"duplicate seq {seq} (also at `$.reports[{j}]`) with a different report: each report "
                f"needs its own seq - at `$.reports[{i}].seq`"
            )


def seq_ranges(req: RequestIn) -> list[tuple[int, int]]:
    return from_seqs(r.seq for r in req.reports)


class Checked(msgspec.Struct, frozen=True):
    """What the ingest side keeps of a request it validated: enough to answer and to count."""

    agent: str
    seqs: list[tuple[int, int]]
    reports: int
    points: int
    incarnation: str = ""


def summary(req: RequestIn) -> Checked:
    return Checked(
        req.agent, seq_ranges(req), len(req.reports), sum(len(r.points) for r in req.reports), req.incarnation
    )


# native/src/reportcheck.rs. A module attribute, not a direct call: the tests set it to None to
# compare against the exact decode it stands in for.
_reports_check: Callable[[bytes, bool], tuple[str, str, list[int], int] | None] | None = _native.reports_check


def quick_check(body: bytes, content_type: str) -> Checked | None:
    """The summary of a body that certainly passes :func:`decode`, read in one pass without a
    Python object per point; None for any other body (then :func:`decode` refuses it with its
    message, or passes it). The common case of ingest: a 500-point report cost ~0.35 ms decoded."""
    if _reports_check is None:
        return None
    got = _reports_check(body, content_type == MSGPACK)
    if got is None:
        return None
    agent, incarnation, seqs, points = got
    return Checked(agent, from_seqs(seqs), len(seqs), points, incarnation)


def check(body: bytes, content_type: str) -> Checked:
    """Validate a decompressed body (see :func:`decode`) and keep only its summary. The decoded
    points are freed here, before the caller waits for the log: a request in flight that held its
    thousands of objects made every request 20-70% costlier (64 in flight, measured)."""
    return quick_check(body, content_type) or summary(decode(body, content_type))


SEQ_CONFLICT = "seq_conflict"


def conflicting(req: RequestIn, stored: dict[int, bytes]) -> list[tuple[int, int]]:
    """The seq ranges of ``req`` whose reports differ from the stored ones (``stored``: digest per
    stored seq, :func:`lossproof.store.base.report_digest`). Only reports with a stored seq are
    encoded and hashed: a request of new seqs costs nothing here."""
    if not stored:
        return []
    bad = {r.seq for r in req.reports if r.seq in stored and not same_report(r.points, stored[r.seq])}
    return from_seqs(bad)


class Envelope(msgspec.Struct, array_like=True):
    """What ingest appends to the log for one request: the body exactly as it arrived (still
    compressed) plus who sent it. Workers decode; ingest only checked that it decodes."""

    version: int
    tenant: str
    protocol: str
    content_type: str
    encoding: str
    received_ms: int
    agent: str
    seqs: list[tuple[int, int]]
    body: bytes
    # Request parameters a third-party decoder needs (Influx precision, db/bucket; remote-write
    # message type). Last, with a default: records written before it existed still decode.
    params: dict[str, str] = {}


_env_enc = msgspec.msgpack.Encoder()
_env_dec = msgspec.msgpack.Decoder(Envelope)


def encode_envelope(env: Envelope) -> bytes:
    return _env_enc.encode(env)


def decode_envelope(data: bytes) -> Envelope:
    return _env_dec.decode(data)


def log_key(tenant: str, agent: str) -> bytes:
    # One agent's records share a key, so a partitioned log keeps them in order.
    return f"{tenant}\x00{agent}".encode()
