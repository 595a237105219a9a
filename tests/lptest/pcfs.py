"""A power-cut file system: a FUSE daemon whose disk forgets whatever was not fsync'd.

Run as a process of its own (``python -m lptest.pcfs BACKING MOUNTPOINT``; tests use
:class:`lptest.powercut.PowerCutFS`). Files and directories live in memory, as the page cache would
hold them; only what a sync made durable is written to ``BACKING``, which plays the disk:

- ``fsync``/``fdatasync`` of a file writes that inode's bytes (and size) to ``BACKING/data/<ino>``;
- ``fsync`` of a directory writes that directory's entries (names -> inodes) to ``BACKING/meta.json``.
  A created, renamed or unlinked name is on the "disk" only once its directory was fsync'd; a file
  whose data was synced but whose name never was is an orphan and is gone after the cut.

The power cut is the death of this process: ``SIGKILL`` drops everything not synced. ``SIGUSR1``
first persists a random prefix of the last write not covered by a sync (a torn write), ``SIGUSR2``
a random subset of the 4 KiB pages written since their file's last sync (pages reaching the disk out
of order), then the process exits as if killed. A new daemon over the same ``BACKING`` is the
machine after the reboot. Nothing of the code under test runs in here, and it cannot reach in: the
durable image changes only on the kernel's fsync and fsyncdir requests, which only a real
``fsync(2)``/``fdatasync(2)`` produces.

The model is stricter than ext4's (which commits a new file's name with the file's own fsync) and
as strict as POSIX: that is the point. It does not model a disk that lies about a flush, bit rot,
or metadata-only syncs (a file's size change counts as data for ``fdatasync``, as on Linux).
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import random
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import pyfuse3
import trio

PAGE = 4096


@dataclass
class Node:
    ino: int
    is_dir: bool
    mode: int
    # The file's bytes up to the last one written; ``size`` may be larger (a file extended with
    # ftruncate, as Kafka preallocates each index to 10 MiB): the rest reads as zeros and takes no
    # memory.
    data: bytearray = field(default_factory=bytearray)
    size: int = 0
    entries: dict[bytes, int] = field(default_factory=dict)  # live directory entries
    dirty: list[tuple[int, int]] = field(default_factory=list)  # byte ranges written since the last sync
    synced_size: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    nlink: int = 1


class PowerCutOps(pyfuse3.Operations):  # type: ignore[misc]
    def __init__(self, backing: Path, seed: int) -> None:
        super().__init__()
        self.backing = backing
        self.rng = random.Random(seed)
        (backing / "data").mkdir(parents=True, exist_ok=True)
        self.nodes: dict[int, Node] = {}
        self.durable_dirs: dict[int, dict[str, int]] = {}
        self.durable_kind: dict[int, tuple[bool, int]] = {}  # ino -> (is_dir, mode)
        self.handles: dict[int, int] = {}  # fh -> ino
        self.open_count: dict[int, int] = {}  # ino -> open handles
        self.next_fh = 1
        self.last_write: tuple[int, int, bytes] | None = None  # (ino, offset, data) not yet synced
        self._load()

    # --- the "disk" --------------------------------------------------------------------------------

    def _load(self) -> None:
        meta_path = self.backing / "meta.json"
        root = pyfuse3.ROOT_INODE
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            self.durable_dirs = {int(k): v for k, v in meta["dirs"].items()}
            self.durable_kind = {int(k): (bool(v[0]), int(v[1])) for k, v in meta["kinds"].items()}
        else:
            self.durable_dirs = {root: {}}
            self.durable_kind = {root: (True, stat.S_IFDIR | 0o755)}
        # Only what is reachable from the root through durable entries exists after a reboot.
        reachable: set[int] = set()
        todo = [root]
        while todo:
            ino = todo.pop()
            if ino in reachable:
                continue
            reachable.add(ino)
            is_dir, mode = self.durable_kind[ino]
            node = Node(ino, is_dir, mode)
            if is_dir:
                entries = self.durable_dirs.setdefault(ino, {})
                node.entries = {os.fsencode(k): v for k, v in entries.items()}
                todo.extend(entries.values())
            else:
                p = self.backing / "data" / str(ino)
                raw = p.read_bytes() if p.exists() else b""
                node.data = bytearray(raw.rstrip(b"\0"))
                node.size = node.synced_size = len(raw)
            self.nodes[ino] = node
        links: dict[int, int] = {}
        for entries in self.durable_dirs.values():
            for child in entries.values():
                links[child] = links.get(child, 0) + 1
        for ino, n in links.items():
            if ino in self.nodes and not self.nodes[ino].is_dir:
                self.nodes[ino].nlink = n
        self.durable_dirs = {k: v for k, v in self.durable_dirs.items() if k in reachable}
        self.durable_kind = {k: v for k, v in self.durable_kind.items() if k in reachable}
        for p in (self.backing / "data").iterdir():
            if int(p.name) not in reachable:
                p.unlink()
        self.next_ino = max(self.nodes) + 1

    def _persist_file(self, node: Node, ranges: list[tuple[int, int]] | None = None) -> None:
        """Write ``ranges`` of the node's live bytes (all dirty ones if None) to the disk image."""
        p = self.backing / "data" / str(node.ino)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            todo = node.dirty if ranges is None else ranges
            for a, b in todo:
                b = min(b, node.size)
                if b > a:
                    os.pwrite(fd, self._bytes(node, a, b), a)
            if ranges is None:
                # Past the written bytes the file is zeros, whatever the disk held there before.
                os.ftruncate(fd, len(node.data))
                os.ftruncate(fd, node.size)
                node.dirty = []
                node.synced_size = node.size
        finally:
            os.close(fd)

    @staticmethod
    def _bytes(node: Node, a: int, b: int) -> bytes:
        """Bytes ``[a, b)`` of the file (``b`` at most its size), zeros past the written ones."""
        chunk = bytes(node.data[a:b])
        return chunk + bytes(b - a - len(chunk))

    def _persist_meta(self) -> None:
        meta = {
            "dirs": {str(k): v for k, v in self.durable_dirs.items()},
            "kinds": {str(k): [v[0], v[1]] for k, v in self.durable_kind.items()},
        }
        tmp = self.backing / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.backing / "meta.json")

    def _sync_dir(self, node: Node) -> None:
        entries = {os.fsdecode(k): v for k, v in node.entries.items()}
        self.durable_dirs[node.ino] = entries
        for child in entries.values():
            if child not in self.durable_kind:
                c = self.nodes[child]
                self.durable_kind[child] = (c.is_dir, c.mode)
                if c.is_dir:
                    self.durable_dirs.setdefault(child, {})
                else:
                    # The inode is on disk now, with only the bytes a sync of its own wrote.
                    (self.backing / "data" / str(child)).touch()
        self._persist_meta()

    def cut(self, how: str) -> None:
        """Persist a part of what was never synced (``tear``: a prefix of the last write;
        ``pages``: random dirty pages of every file), as a disk losing power mid-flush may."""
        if how == "tear" and self.last_write is not None:
            ino, off, data = self.last_write
            node = self.nodes.get(ino)
            if node is not None and ino in self.durable_kind and len(data) > 1:
                n = self.rng.randrange(1, len(data))
                self._persist_file(node, [(off, off + n)])
        elif how == "pages":
            for node in self.nodes.values():
                if node.is_dir or node.ino not in self.durable_kind:
                    continue
                pages = sorted({p for a, b in node.dirty for p in range(a // PAGE, (b + PAGE - 1) // PAGE)})
                keep = [p for p in pages if self.rng.random() < 0.5]
                self._persist_file(node, [(p * PAGE, (p + 1) * PAGE) for p in keep])

    # --- helpers -------------------------------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.st_mode = node.mode
        a.st_nlink = 2 if node.is_dir else node.nlink
        a.st_size = 4096 if node.is_dir else node.size
        a.st_blksize = PAGE
        a.st_blocks = (a.st_size + 511) // 512
        a.st_uid = os.getuid()
        a.st_gid = os.getgid()
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        a.entry_timeout = 0
        a.attr_timeout = 0
        return a

    def _new(self, parent: int, name: bytes, mode: int, is_dir: bool) -> Node:
        pnode = self._node(parent)
        if name in pnode.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = Node(self.next_ino, is_dir, mode)
        self.next_ino += 1
        self.nodes[node.ino] = node
        pnode.entries[name] = node.ino
        pnode.mtime_ns = time.time_ns()
        return node

    def _close(self, fh: int) -> None:
        ino = self.handles.pop(fh, None)
        if ino is None:
            return
        n = self.open_count.pop(ino, 0) - 1
        if n > 0:
            self.open_count[ino] = n
        else:
            self._drop_if_gone(ino)

    def _drop_if_gone(self, ino: int) -> None:
        """Free the bytes of a file that has no name and no open handle (an mmap holds one): nothing
        can read them again, and what syncs made durable is in the disk image already. Kafka deletes
        segments all the time (a compacted topic's cleaner, retention): kept, they add up."""
        node = self.nodes.get(ino)
        if node is not None and not node.is_dir and node.nlink <= 0 and ino not in self.open_count:
            node.data = bytearray()
            node.dirty = []

    def _names_of(self, ino: int) -> set[str]:
        return {os.fsdecode(k) for n in self.nodes.values() for k, v in n.entries.items() if v == ino}

    def _fh(self, ino: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = ino
        self.open_count[ino] = self.open_count.get(ino, 0) + 1
        return fh

    # --- operations ----------------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        pnode = self._node(parent_inode)
        if name == b".":
            return self._attr(pnode)
        ino = pnode.entries.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self._node(ino))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self._node(inode))

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if fields.update_size:
            size = attr.st_size
            if size < len(node.data):
                del node.data[size:]
            node.size = size
            node.dirty.append((0, 0))  # a size change: the next sync rewrites the length
            node.mtime_ns = time.time_ns()
        if fields.update_mode:
            node.mode = (node.mode & ~0o7777) | (attr.st_mode & 0o7777)
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        return self._attr(node)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self._node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return self._fh(inode)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node = self._node(self.handles[fh])
        items = sorted(node.entries.items())
        for i, (name, ino) in enumerate(items[start_id:], start_id):
            child = self.nodes.get(ino)
            if child is None:
                continue
            if not pyfuse3.readdir_reply(token, name, self._attr(child), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self._close(fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self._sync_dir(self._node(self.handles[fh]))

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attr(self._new(parent_inode, name, stat.S_IFDIR | (mode & 0o7777), True))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        pnode = self._node(parent_inode)
        ino = pnode.entries.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self._node(ino).entries:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del pnode.entries[name]

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        pnode = self._node(parent_inode)
        ino = pnode.entries.pop(name, None)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self._node(ino).nlink -= 1
        pnode.mtime_ns = time.time_ns()
        self._drop_if_gone(ino)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old, new = self._node(parent_inode_old), self._node(parent_inode_new)
        ino = old.entries.get(name_old)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        replaced = new.entries.get(name_new)
        if replaced is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            rnode = self._node(replaced)
            if rnode.is_dir and rnode.entries:
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            rnode.nlink -= 1
        del old.entries[name_old]
        new.entries[name_new] = ino
        if replaced is not None:
            self._drop_if_gone(replaced)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        pnode = self._node(new_parent_inode)
        if new_name in pnode.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = self._node(inode)
        pnode.entries[new_name] = inode
        node.nlink += 1
        return self._attr(node)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & os.O_TRUNC and node.size:
            node.data.clear()
            node.size = 0
            node.dirty.append((0, 0))
        return pyfuse3.FileInfo(fh=self._fh(inode))

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = self._new(parent_inode, name, stat.S_IFREG | (mode & 0o7777), False)
        return pyfuse3.FileInfo(fh=self._fh(node.ino)), self._attr(node)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._node(self.handles[fh])
        return self._bytes(node, off, min(off + size, node.size)) if off < node.size else b""

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self._node(self.handles[fh])
        end = off + len(buf)
        if off > len(node.data):
            node.data.extend(bytes(off - len(node.data)))
        node.data[off:end] = buf
        node.size = max(node.size, end)
        if node.dirty and node.dirty[-1][1] == off:
            node.dirty[-1] = (node.dirty[-1][0], end)  # appends extend the last range
        else:
            node.dirty.append((off, end))
        node.mtime_ns = time.time_ns()
        self.last_write = (node.ino, off, bytes(buf))
        return len(buf)

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        self._close(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        # A slow disk on request (PowerCutFS.slow_fsync): a kill -9 then lands between a write and
        # its sync, leaving unsynced data behind for the next start to find.
        node = self._node(self.handles[fh])
        delay = self.backing / "fsync-delay"
        mode = delay.read_text() if delay.exists() else ""
        if mode.startswith("hang"):
            # Not answered while the mode lasts, then failed without persisting anything: a caller
            # kill -9'd meanwhile dies (the kernel waits for the answer) with its data unsynced. A
            # sync that merely ran late would persist it after the kill.
            name = mode.partition(":")[2]
            if not name or any(fnmatch.fnmatchcase(n, name) for n in self._names_of(node.ino)):
                while delay.exists() and delay.read_text() == mode:
                    await trio.sleep(0.02)
                raise pyfuse3.FUSEError(errno.EIO)
        elif mode:
            await trio.sleep(float(mode))
        self._persist_file(node)
        if self.last_write is not None and self.last_write[0] == node.ino:
            self.last_write = None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = PAGE
        s.f_blocks = 1 << 20
        used = sum(n.size for n in self.nodes.values()) // PAGE
        s.f_bfree = s.f_bavail = max(0, s.f_blocks - used)
        s.f_files = 1 << 20
        s.f_ffree = s.f_favail = s.f_files - len(self.nodes)
        s.f_namemax = 255
        return s


def main() -> None:
    backing, mountpoint = Path(sys.argv[1]), sys.argv[2]
    seed = int(os.environ.get("PCFS_SEED", "0"))
    ops = PowerCutOps(backing, seed)

    def power_cut(how: str) -> None:
        ops.cut(how)
        os._exit(137)  # like SIGKILL: nothing else reaches the disk image

    def on_signal(signum: int, frame: FrameType | None) -> None:
        power_cut("tear" if signum == signal.SIGUSR1 else "pages")

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGUSR2, on_signal)
    options = set(pyfuse3.default_options)
    options.add("fsname=pcfs")
    options.discard("default_permissions")
    pyfuse3.init(ops, mountpoint, options)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
