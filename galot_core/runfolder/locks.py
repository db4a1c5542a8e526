"""The run folder's two cross-process locks: the run lock and the labels lock.

Both are an ``flock`` on a folder itself, so no lock file is ever left behind and the kernel
releases a lock when its holder dies (SIGKILL included). :class:`FolderLocks` is mixed into
:class:`~galot_core.runfolder.RunFolder`, which provides ``path`` and ``labels_dir``.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from galot_core.errors import GalotError

RUN_LOCK_ENV = "GALOT_RUN_LOCK_FD"  # a descriptor holding the run lock, passed to the `galot run` a page starts
# The run locks this process holds: folder identity -> (pid, descriptor, depth). The pid keeps
# a forked child from believing it holds its parent's lock.
_HELD: dict[tuple[int, int], tuple[int, int, int]] = {}
_HELD_GUARD = threading.Lock()


class FolderLocks:
    path: Path
    labels_dir: Path

    @contextmanager
    def labels_lock(self) -> Iterator[None]:
        """Hold the cross-process lock on the label answers (and their commit to pool.json).

        Every read-modify-write of ``labels/*.answers.json`` and the commit happens under it,
        so the labelling page, ``galot label import`` and a running experiment, in any
        processes, never overwrite each other's acknowledged answers. It is an ``flock`` on
        the labels folder itself: no lock file is left behind, and the kernel releases it
        when a holder dies.
        """
        self.labels_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.labels_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the lock

    def try_run_lock(self) -> int | None:
        """The run lock, held by the one ``galot run`` working on this folder: a descriptor, or None if taken.

        An ``flock`` on the run folder. It is shared with a child process that inherits the
        descriptor (``subprocess.Popen(pass_fds=...)``), which is how the labelling page's
        "done" hands the lock to the run it starts: no second run can start in between.
        """
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _inherited_run_lock(self) -> int | None:
        """The run lock handed down by the process that started this one (RUN_LOCK_ENV), if it is this folder's."""
        text = os.environ.pop(RUN_LOCK_ENV, "")
        if not text.isdigit():
            return None
        fd = int(text)
        try:
            same = (os.fstat(fd).st_ino, os.fstat(fd).st_dev) == (os.stat(self.path).st_ino, os.stat(self.path).st_dev)
            if same:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a no-op on the description that holds it
                return fd
        except OSError:
            pass
        return None

    @contextmanager
    def run_lock(self) -> Iterator[None]:
        """Be the one process advancing this experiment while inside; a second one gets one line, exit 2.

        Taken by every path that advances a run, not only by the command line: the cycle itself
        (galot_core.cycle.run_cycle), the flows (a Prefect deployment runs those, not the CLI),
        and the CLI before it checks and writes anything. It is re-entrant within a process, so
        those nested holders share one lock: the outermost one takes it, the innermost ones
        count, and the last one out releases it. Another process (another ``galot run``, a flow
        run of a deployment, a page's done) is refused.
        """
        key = self._lock_key()
        with _HELD_GUARD:
            held = _HELD.get(key) if key is not None else None
            if held is not None and held[0] == os.getpid():
                _HELD[key] = (held[0], held[1], held[2] + 1)
                fd = None
            else:
                fd = self._inherited_run_lock()
                if fd is None:
                    self.path.mkdir(parents=True, exist_ok=True)
                    fd = self.try_run_lock()
                if fd is None:
                    raise GalotError(f"{self.path}: another `galot run` (or a flow run of galot, or the labelling "
                                     "page's done) is already running this experiment; wait for it to stop, then "
                                     "run again")
                key = self._lock_key()
                _HELD[key] = (os.getpid(), fd, 1)
        try:
            yield
        finally:
            with _HELD_GUARD:
                pid, lock_fd, count = _HELD[key]
                if count > 1:
                    _HELD[key] = (pid, lock_fd, count - 1)
                else:
                    del _HELD[key]
                    os.close(lock_fd)  # closing the only descriptor releases the lock

    def _lock_key(self) -> tuple[int, int] | None:
        """The folder's identity (device, inode): two spellings of one path share the lock."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino
