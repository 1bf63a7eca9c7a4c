"""One training run per workdir: an OS lock on `<workdir>/.lock`, naming its holder.

`fcntl.flock` is released by the kernel when the holding process ends, however it ends, so
a crashed run never blocks the next. The file also records who holds it (host, pid, start
time) for the refusal message. On NFS, Linux maps flock onto NFS byte-range locks (NFSv4, or
v3 with lockd); on filesystems without working remote locks, two hosts may both get it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ambsn_jax.errors import UserError

LOCK_NAME = ".lock"


def _holder(text: str) -> dict | None:
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict | None) -> str:
    if info is None:
        return "an unknown process"
    return f"process {info.get('pid')} on host {info.get('host')} (started {info.get('started')})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def hold_workdir(workdir: Path) -> Iterator[None]:
    """Holds `workdir`'s lock for the block; UserError naming the holder if another run has it."""
    path = workdir / LOCK_NAME
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"{path}: cannot create the workdir lock ({e.strerror}); pass a writable --workdir") from e
    with os.fdopen(fd, "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{workdir}: in use by {_describe(_holder(f.read()))}, which holds {path}; "
                "wait for it to end (or stop it), or pass another --workdir"
            ) from None
        # We hold the lock, so whoever wrote the file is gone (or, on another host, not locking).
        left = _holder(f.read())
        if left is not None:
            host = socket.gethostname()
            gone = left.get("host") == host and isinstance(left.get("pid"), int) and not _alive(left["pid"])
            why = "which no longer runs" if gone else "which did not release it (another host, or a filesystem without locks?)"
            print(f"warning: {path}: taking over the lock of {_describe(left)}, {why}", file=sys.stderr)
        f.seek(0)
        f.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}))
        f.flush()
        try:
            yield
        finally:
            # An empty file is a released lock: the next run has nobody to warn about.
            f.seek(0)
            f.truncate()
