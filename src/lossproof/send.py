"""``lossproof send``: post points (one JSON object a line) to the native protocol.

Seqs must never repeat for an agent, so ``send`` reserves them in a small state file (under a
lock, fsync'd) before posting. A report the server did not acknowledge is retried, with the same
seq, until it is, or the command fails loudly.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec
import urllib3

from lossproof.protocol.compression import compress


class SendError(Exception):
    pass


def parse_lines(stream: IO[str]) -> Iterator[dict[str, Any]]:
    now = int(time.time() * 1000)
    for lineno, line in enumerate(stream, 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise SendError(f"line {lineno}: not JSON: {e}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("metric"), str):
            raise SendError(f"line {lineno}: expected an object with a string 'metric'")
        if "v" not in obj and "value" in obj:
            obj["v"] = obj.pop("value")
        obj.setdefault("t", now)
        obj.setdefault("labels", {})
        yield obj


def reserve_seqs(state_dir: Path, agent: str, n: int) -> int:
    """Reserve ``n`` consecutive seqs for ``agent``; returns the first."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"{agent.replace('/', '_')}.seq"
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read().strip()
        last = int(text) if text else 0
        f.seek(0)
        f.truncate()
        f.write(str(last + n))
        f.flush()
        os.fsync(f.fileno())
    return last + 1


def chunks(points: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    buf: list[dict[str, Any]] = []
    for p in points:
        buf.append(p)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def post(
    http: urllib3.PoolManager, url: str, key: str, body: dict[str, Any], encoding: str, attempts: int
) -> dict[str, Any]:
    data = compress(msgspec.json.encode(body), encoding)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if encoding != "identity":
        headers["Content-Encoding"] = encoding
    delay = 0.2
    last = ""
    for _ in range(attempts):
        try:
            r = http.request(
                "POST", url.rstrip("/") + "/v1/reports", body=data, headers=headers, retries=False
            )
        except urllib3.exceptions.HTTPError as e:
            last = f"cannot reach {url}: {e}"
        else:
            text = r.data.decode(errors="replace")
            if r.status == 200:
                return json.loads(text)  # type: ignore[no-any-return]
            if r.status < 500 and r.status != 429:
                raise SendError(f"server refused the request ({r.status}): {text.strip()}")
            last = f"server answered {r.status}: {text.strip()}"
            retry_after = r.headers.get("Retry-After")
            if retry_after and retry_after.isdigit():
                delay = max(delay, float(retry_after))
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
    raise SendError(f"not acknowledged after {attempts} attempts: {last}")
