"""Tests' handle on the power-cut file system (``lptest/pcfs.py``): mount it, cut the power, remount.

    with PowerCutFS(tmp_path) as fs:
        run_something_on(fs.root)
        kill_everything_using_it()
        fs.power_cut()          # or power_cut("tear") / power_cut("pages")
        check(fs.root)          # what a reboot finds: only what was fsync'd

Every process that has files open on the mount must be dead before the cut (as on a real machine,
where the power takes them too): the cut kills the daemon and lazily unmounts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from lptest import read_lines, require, subprocess_env


def available() -> tuple[bool, str]:
    """Whether FUSE mounts can work here: /dev/fuse, fusermount3 and pyfuse3."""
    if not os.path.exists("/dev/fuse"):
        return False, "/dev/fuse"
    if shutil.which("fusermount3") is None:
        return False, "fusermount3 (Debian's fuse3; scripts/deps/crash.sh)"
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return False, "pyfuse3 (the dev extra)"
    return True, ""


def require_fuse() -> None:
    ok, what = available()
    require(ok, what)


class PowerCutFS:
    """One power-cut file system: ``root`` is the mount point, ``backing`` the durable image."""

    def __init__(self, base: Path, seed: int = 0) -> None:
        self.base = base
        self.backing = base / "disk"
        self.root = base / "mnt"
        self.seed = seed
        self.cuts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def mount(self) -> None:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        env = subprocess_env()
        env["PCFS_SEED"] = str(self.seed * 1000 + self.cuts)
        self._log = open(self.base / f"pcfs.{self.cuts}.log", "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "lptest.pcfs", str(self.backing), str(self.root)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != b"READY":
            self._proc.kill()
            self._proc.wait()
            raise RuntimeError(f"pcfs did not mount: {(self.base / f'pcfs.{self.cuts}.log').read_text()}")

    def slow_fsync(self, seconds: float) -> None:
        """Make every file fsync take ``seconds`` (0: back to normal), from outside the code."""
        self._fsync_mode(str(seconds) if seconds else "")

    def hang_fsync(self, name: str = "") -> None:
        """From now on, fsyncs (of files whose name matches the glob ``name``, or all) do not
        return: a process killed in one leaves its data unsynced. ``slow_fsync(0)`` ends it: the hung
        calls fail with EIO, having persisted nothing (the kernel keeps a process in a FUSE call
        until it is answered, so kill it first, then end the hang, then wait for it)."""
        self._fsync_mode(f"hang:{name}")

    def _fsync_mode(self, mode: str) -> None:
        path = self.backing / "fsync-delay"
        if mode:
            path.write_text(mode)
        else:
            path.unlink(missing_ok=True)

    def power_cut(self, how: str = "clean") -> None:
        """Lose everything not fsync'd (``tear``: but persist a prefix of the last write; ``pages``:
        but persist random pages written since their file's last sync), then come back up."""
        assert self._proc is not None
        sig = {"clean": signal.SIGKILL, "tear": signal.SIGUSR1, "pages": signal.SIGUSR2}[how]
        self._proc.send_signal(sig)
        self._proc.wait(timeout=30)
        self._unmount()
        self.cuts += 1
        self.mount()

    def _unmount(self) -> None:
        for _ in range(50):
            r = subprocess.run(["fusermount3", "-u", "-z", str(self.root)], capture_output=True)
            if r.returncode == 0 or not os.path.ismount(self.root):
                return
            time.sleep(0.1)
        raise RuntimeError(f"cannot unmount {self.root}: {r.stderr.decode(errors='replace')}")

    def close(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait(timeout=30)
            self._proc = None
            self._log.close()
            self._unmount()

    def __enter__(self) -> PowerCutFS:
        self.mount()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class LineProc:
    """A helper process (``lptest/procs``) whose stdout is one line per event; read without blocking."""

    def __init__(self, args: list[str], log: Path) -> None:
        self._err = open(log, "ab")  # noqa: SIM115 - closed in kill9
        self.proc = subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=self._err, env=subprocess_env()
        )
        self.log = log
        self.lines: list[str] = []
        self._buf = b""
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        lines, self._buf = read_lines(self.proc.stdout.fileno(), self._buf)
        self.lines.extend(x.decode() for x in lines)

    def count(self, prefix: str) -> int:
        return sum(1 for x in self.lines if x.startswith(prefix))

    def wait(self, prefix: str, n: int = 1, timeout: float = 30.0) -> list[str]:
        """Wait until ``n`` lines start with ``prefix``; fails with the process's stderr if it died."""
        deadline = time.monotonic() + timeout
        while True:
            self._pump()
            got = [x for x in self.lines if x.startswith(prefix)]
            if len(got) >= n:
                return got
            if self.proc.poll() is not None:
                self._pump()
                raise AssertionError(
                    f"{self.proc.args} exited {self.proc.returncode}: {self.log.read_text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(got)} of {n} {prefix!r} lines after {timeout}s: {self.log.read_text()}"
                )
            time.sleep(0.005)

    def kill9(self) -> list[str]:
        """SIGKILL it; returns every complete line it printed (a torn last line is not one)."""
        self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), True)
        self._buf += self.proc.stdout.read()
        *lines, _torn = self._buf.split(b"\n")
        self._buf = b""
        self.lines.extend(x.decode() for x in lines)
        self.proc.stdout.close()
        self._err.close()
        return self.lines
