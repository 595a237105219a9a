"""The agent spool and the fallback journal on the power-cut file system, through kill -9 + power cuts.

As for the log (test_power_cut_log.py), only what a real fsync covered survives a cut here. Checked:

- spool: every report ``append`` returned for is still pending with its content or was acknowledged;
  no seq is handed out twice; recovery never declares a seq lost (``spool_damaged``), because the disk
  lost nothing that was synced; an acknowledgement the state file recorded stays recorded.
- journal: every record ``append`` acknowledged reads back with its content; no index or position is
  handed out twice; readers never meet corruption.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lossproof.agent.spool import Spool
from lossproof.agent.spool.counter import SeqCounter
from lossproof.fallback.journal import read_all
from lptest import PROCS
from lptest.powercut import LineProc, PowerCutFS, require_fuse
from lptest.procs.journal_appender import body_bytes
from lptest.procs.spool_appender import report_bytes

pytestmark = pytest.mark.process

CUTS = ["clean", "tear", "pages", "clean", "pages", "tear"]


def test_spool_survives_kill9_and_power_cuts(tmp_path: Path) -> None:
    require_fuse()
    with PowerCutFS(tmp_path, seed=3) as fs:
        spool_dir = fs.root / "agent" / "spool"
        durable: dict[int, str] = {}  # seq -> tag of the process that got it back from append
        acked: set[int] = set()
        acking: set[int] = set()
        last_seq = 0
        for rnd, how in enumerate(CUTS):
            tag = f"r{rnd}"
            args = [str(PROCS / "spool_appender.py"), str(spool_dir), "--tag", tag]
            app = LineProc(args, tmp_path / "spool.log")
            ready = app.wait("READY")[0].split()
            assert int(ready[2]) == 0, f"round {rnd}: recovery declared {ready[2]} seqs lost after a cut"
            assert int(ready[1]) >= last_seq, f"round {rnd}: the seq counter went back to {ready[1]}"
            app.wait("SEQ ", 40 + 20 * rnd)
            if rnd % 2:
                # The disk stops answering fsyncs of the reports' files (in round 3, of the seq
                # counter), so the kill lands between a write and its sync.
                fs.hang_fsync("seq" if rnd == 3 else "*.seg")
                time.sleep(0.3)
                app.proc.kill()  # dies once the hung fsync is answered, with EIO, below
                fs.slow_fsync(0)
            for line in app.kill9():
                if line.startswith("SEQ "):
                    seq = int(line.split()[1])
                    assert seq not in durable, f"seq {seq} handed out twice"
                    durable[seq] = tag
                elif line.startswith("ACKED "):
                    a, b = map(int, line.split()[1:])
                    acked.update(range(a, b + 1))
                    acking.difference_update(range(a, b + 1))
                elif line.startswith("ACKING "):
                    a, b = map(int, line.split()[1:])
                    acking.update(range(a, b + 1))  # killed inside ack(): acknowledged or still pending
            last_seq = max(durable)
            fs.slow_fsync(0)
            if rnd % 2:
                # A restart without traffic before the cut: what it adopted (a killed agent's
                # unsynced records) moved the counter past them, so they must be durable too.
                idle = LineProc([*args, "--idle"], tmp_path / "spool.log")
                last_seq = max(last_seq, int(idle.wait("READY")[0].split()[1]))
                idle.kill9()
            fs.power_cut(how)
            # The seq counter is the spool's own durable record of the highest seq handed out (for
            # a disk that later loses spool files): it must have survived the cut by itself.
            counter = SeqCounter(spool_dir)
            counter.close()
            assert counter.value >= last_seq, f"round {rnd}: the seq counter lost {counter.value}..{last_seq}"
            with Spool(spool_dir) as spool:
                assert not spool.recovery.lost, f"round {rnd} ({how}): lost {spool.recovery.lost}"
                assert spool.last_seq >= last_seq, f"round {rnd}: last seq {spool.last_seq} < {last_seq}"
                pending = set(spool.pending_seqs(10**6))
                assert not pending & acked, f"round {rnd}: acknowledged seqs pending again"
                missing = [s for s in durable if s not in acked | acking and s not in pending]
                assert not missing, f"round {rnd} ({how}): reports lost: {missing[:10]}"
                acked.update(acking - pending)
                acking.clear()
                for seq, data in spool.read(sorted(pending & set(durable))):
                    assert report_bytes(seq, durable[seq]) in data, f"seq {seq}: wrong content"
        assert len(durable) > 100 and acked


def test_journal_survives_kill9_and_power_cuts(tmp_path: Path) -> None:
    require_fuse()
    with PowerCutFS(tmp_path, seed=4) as fs:
        jdir = fs.root / "fallback" / "journal"
        acked: dict[tuple[int, int], str] = {}  # position -> tag
        for rnd, how in enumerate(CUTS):
            app = LineProc([str(PROCS / "journal_appender.py"), str(jdir)], tmp_path / "journal.log")
            app.wait("READY")
            app.wait("ACK ", 40 + 20 * rnd)
            if rnd % 2:
                # The disk stops answering the segments' fsyncs: the kill lands between a group's
                # write and its sync, and the restart below finds the unsynced tail.
                fs.hang_fsync("*.jnl")
                time.sleep(0.3)
                app.proc.kill()  # dies once the hung fsync is answered, with EIO, below
                fs.slow_fsync(0)
            for line in app.kill9():
                if line.startswith("ACK "):
                    _, segment, pos, tag = line.split()
                    key = (int(segment), int(pos))
                    assert key not in acked, f"journal position {key} acknowledged twice"
                    acked[key] = tag
            if rnd % 2:
                # A restart without traffic: its new segment's header vouches for the old tail.
                idle = LineProc([str(PROCS / "journal_appender.py"), str(jdir)], tmp_path / "journal.log")
                idle.wait("READY")
                idle.kill9()
            fs.power_cut(how)
            records = {(r.segment, r.pos): r for r in read_all(jdir)}  # JournalCorrupt fails the test
            indices = [r.index for r in records.values()]
            assert len(indices) == len(set(indices)), f"round {rnd}: a journal index handed out twice"
            lost = [k for k in acked if k not in records]
            assert not lost, f"round {rnd} ({how}): {len(lost)} acknowledged records lost, e.g. {lost[:5]}"
            for k, tag in acked.items():
                assert records[k].entry.agent == tag and records[k].entry.body == body_bytes(tag), k
        assert len(acked) > 100
