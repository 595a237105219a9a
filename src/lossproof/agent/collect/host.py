"""Host metrics via psutil, sampled every interval in their own thread.

Cumulative counters (CPU seconds, disk and network bytes and operations) are sent as the raw
monotonically increasing values, so a missed or replayed report never distorts a rate computed from
them. Per-device series skip loop and RAM disks; filesystems are the real (non-virtual) mounts.

A slow ``statvfs`` (a hung network mount) stalls only this thread, never the reports or the sender.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import psutil  # type: ignore[import-untyped]  # no stubs installed; calls are plain

from lossproof.agent.report import Point, make_point
from lossproof.obs.logging import get

log = get(__name__)

_SKIP_DISKS = ("loop", "ram", "zram")
_PARTITIONS_TTL = 60.0


class HostCollector:
    def __init__(
        self,
        interval: float,
        base_labels: dict[str, str],
        emit: Callable[[list[Point]], None],
        on_error: Callable[[], None],
    ) -> None:
        self.interval = interval
        self.base = base_labels
        self.emit = emit
        self.on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-host", daemon=True)
        self._partitions: list[tuple[str, str, str]] = []
        self._partitions_at = -_PARTITIONS_TTL
        self._primed = False
        self._last_warn = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.emit(self.collect())
            except Exception as e:  # a psutil surprise must not end host collection for good
                self.on_error()
                now = time.monotonic()
                if now - self._last_warn > 60:
                    self._last_warn = now
                    log.warning("host.collect_failed", error=f"{type(e).__name__}: {e}")
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (a slow mount): skip the missed ticks
                next_at = time.monotonic() + self.interval
                delay = self.interval
            self._stop.wait(delay)

    def collect(self) -> list[Point]:
        t = time.time_ns() // 1_000_000
        out: list[Point] = []
        base = self.base

        def add(metric: str, v: float, labels: dict[str, str] | None = None) -> None:
            out.append(make_point(metric, v, labels, t, base))

        for mode, secs in psutil.cpu_times()._asdict().items():
            add("system.cpu.time", secs, {"mode": mode})
        # The first call only sets psutil's baseline; its numbers mean nothing.
        total = psutil.cpu_percent(interval=None)
        per_mode = psutil.cpu_times_percent(interval=None)._asdict()
        if self._primed:
            add("system.cpu.percent", total)
            for mode, pct in per_mode.items():
                add("system.cpu.percent", pct, {"mode": mode})
        self._primed = True

        vm = psutil.virtual_memory()
        for name in ("total", "available", "used", "free"):
            add(f"system.memory.{name}", getattr(vm, name))
        add("system.memory.percent", vm.percent)
        sw = psutil.swap_memory()
        add("system.swap.total", sw.total)
        add("system.swap.used", sw.used)
        add("system.swap.percent", sw.percent)

        try:
            l1, l5, l15 = os.getloadavg()
            add("system.load.1", l1)
            add("system.load.5", l5)
            add("system.load.15", l15)
        except OSError:
            pass

        disks = psutil.disk_io_counters(perdisk=True) or {}
        for dev, d in disks.items():
            if dev.startswith(_SKIP_DISKS):
                continue
            labels = {"device": dev}
            add("system.disk.read_bytes", d.read_bytes, labels)
            add("system.disk.write_bytes", d.write_bytes, labels)
            add("system.disk.read_count", d.read_count, labels)
            add("system.disk.write_count", d.write_count, labels)
            add("system.disk.read_time_ms", d.read_time, labels)
            add("system.disk.write_time_ms", d.write_time, labels)

        for nic, n in (psutil.net_io_counters(pernic=True) or {}).items():
            labels = {"interface": nic}
            add("system.net.bytes_sent", n.bytes_sent, labels)
            add("system.net.bytes_recv", n.bytes_recv, labels)
            add("system.net.packets_sent", n.packets_sent, labels)
            add("system.net.packets_recv", n.packets_recv, labels)
            add("system.net.errin", n.errin, labels)
            add("system.net.errout", n.errout, labels)
            add("system.net.dropin", n.dropin, labels)
            add("system.net.dropout", n.dropout, labels)

        for mount, device, fstype in self._mounts():
            try:
                u = psutil.disk_usage(mount)
            except OSError:
                continue  # unmounted since the list was read, or no permission
            labels = {"mount": mount, "device": device, "fstype": fstype}
            add("system.fs.total", u.total, labels)
            add("system.fs.used", u.used, labels)
            add("system.fs.free", u.free, labels)
            add("system.fs.percent", u.percent, labels)
        return out

    def _mounts(self) -> list[tuple[str, str, str]]:
        now = time.monotonic()
        if now - self._partitions_at >= _PARTITIONS_TTL:
            seen: set[str] = set()
            parts = []
            for p in psutil.disk_partitions(all=False):
                if p.mountpoint in seen:
                    continue
                seen.add(p.mountpoint)
                parts.append((p.mountpoint, p.device, p.fstype))
            self._partitions = parts
            self._partitions_at = now
        return self._partitions
