"""The run directory's exclusive lock (one trainer at a time) and its atomic file writes."""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from scaling_jax.errors import OutputExistsError, RunDirLockedError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunDirLock:
    """An exclusive advisory lock on a run directory: `flock(LOCK_EX | LOCK_NB)` on
    `<run_dir>/.lock`, which holds the holder's pid, host, start time and command line.

    `acquire()` refuses at once (RunDirLockedError naming the holder) while another process holds
    the lock. The kernel releases a flock when its holder exits, kill -9 included, so a dead
    trainer never blocks the next one. A lock that stays held although its recorded holder is a
    dead process on this host (a lock server that lost track, as NFS can) is stale: it is broken
    with a warning. `release()` (or leaving the `with` block) unlocks; a directory the lock
    created and that holds nothing else is removed again, so a refused fresh run leaves no trace.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._created_dir = False

    def acquire(self) -> RunDirLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held by this object")
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise OutputExistsError(f"run.dir={self.run_dir}: exists and is not a directory")
        self._created_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                if attempt == 0 and _is_stale(holder):
                    log.warning("%s: breaking a stale lock of pid %s on %s (that process is gone)",
                                self.path, holder.get("pid"), holder.get("host"))
                    _unlink(self.path)
                    continue
                self._cleanup_dir()
                raise RunDirLockedError(f"{self.run_dir}: in use by {_describe(holder)}; wait for it to "
                                        f"finish, stop it, or use another run.dir") from None
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    log.warning("%s: this filesystem does not support file locks (%s); the run directory "
                                "is not protected against a second trainer", self.path, e.strerror)
                    return self
                raise
            if not _same_file(fd, self.path):  # broken as stale by another process meanwhile
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_me()).encode() + b"\n")
            os.fsync(fd)
            self._fd = fd
            return self
        raise RunDirLockedError(f"{self.run_dir}: could not lock {self.path} (another process keeps "
                                f"replacing it)")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # no holder recorded: the lock is free
        finally:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None
        self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        if not self._created_dir:
            return
        try:
            if [p.name for p in self.run_dir.iterdir()] in ([], [LOCK_NAME]):
                _unlink(self.path)
                self.run_dir.rmdir()
        except OSError:
            pass  # someone else is writing here now: leave it

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `path` whole or not at all: a sibling temporary file, fsync'ed, renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:300]}


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (it has not written its name yet)"
    return (f"pid {holder['pid']} on host {holder.get('host', '?')} since {holder.get('started', '?')}"
            f" ({holder.get('command', '?')})")


def _is_stale(holder: dict) -> bool:
    """The recorded holder is a process on this host that no longer exists."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return os.fstat(fd).st_ino == st.st_ino and os.fstat(fd).st_dev == st.st_dev


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


__all__ = ["RunDirLock", "write_text_atomic", "LOCK_NAME"]
