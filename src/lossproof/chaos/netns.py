"""A network namespace for the agents, joined to the host by a veth pair, so the link between agents
and the pipeline can be cut (the host end of the pair set down: every packet is dropped) or slowed
(``tc netem delay``, where the kernel has netem) without touching anything else on the machine.
Loopback-only: the pair is not bridged anywhere. Needs root (or CAP_NET_ADMIN) and the ``ip``
command; :func:`unavailable` says why not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess


class NetnsError(Exception):
    pass


def _run(*argv: str) -> None:
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if r.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")


def unavailable() -> str | None:
    """None when namespaces, veth and netem work here, else the reason (for a clear SKIP)."""
    if shutil.which("ip") is None:
        return "no `ip` command: cannot build a network partition"
    try:
        with AgentNet() as net:
            net.partition()
            net.heal()
    except NetnsError as e:
        return f"network namespaces are not allowed here ({e})"
    return None


class AgentNet:
    """``ns``: the namespace; ``host_ip``: the pipeline's address as seen from inside it."""

    def __init__(self) -> None:
        tag = os.urandom(3).hex()
        self.ns = f"lpchaos-{tag}"
        self.host_if = f"lpch{tag}"
        self.ns_if = f"lpcn{tag}"
        octet = int(tag[:2], 16)
        self.host_ip = f"10.213.{octet}.1"
        self.ns_ip = f"10.213.{octet}.2"
        self._up = False
        self._qdisc = False
        self._cut = False
        self.netem: bool | None = None  # known after the first delay attempt

    def __enter__(self) -> AgentNet:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def create(self) -> None:
        try:
            _run("ip", "netns", "add", self.ns)
            self._up = True
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _run("ip", "link", "set", self.ns_if, "netns", self.ns)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            _run("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            _run("ip", "netns", "exec", self.ns, "ip", "link", "set", self.ns_if, "up")
            _run("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
        except NetnsError:
            self.destroy()
            raise

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def partition(self) -> None:
        """Every packet between the agents and the pipeline is dropped (until :meth:`heal`)."""
        _run("ip", "link", "set", self.host_if, "down")
        self._cut = True

    def delay(self, ms: int, jitter_ms: int = 0) -> bool:
        """Delay packets towards the agents; False (and nothing done) when the kernel lacks netem."""
        if self.netem is False or shutil.which("tc") is None:
            return False
        verb = "change" if self._qdisc else "add"
        try:
            _run(
                "tc",
                "qdisc",
                verb,
                "dev",
                self.host_if,
                "root",
                "netem",
                "delay",
                f"{ms}ms",
                f"{jitter_ms}ms",
            )
        except NetnsError:
            self.netem = False
            return False
        self.netem = self._qdisc = True
        return True

    def heal(self) -> None:
        if self._cut:
            with contextlib.suppress(NetnsError):
                _run("ip", "link", "set", self.host_if, "up")
            self._cut = False
        if self._qdisc:
            with contextlib.suppress(NetnsError):
                _run("tc", "qdisc", "del", "dev", self.host_if, "root")
            self._qdisc = False

    def destroy(self) -> None:
        self.heal()
        with contextlib.suppress(NetnsError):
            _run("ip", "link", "del", self.host_if)  # removes both ends of the pair
        if self._up:
            with contextlib.suppress(NetnsError):
                _run("ip", "netns", "del", self.ns)
            self._up = False
