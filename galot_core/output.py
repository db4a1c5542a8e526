"""Files a user names on the command line (``galot predict --csv PATH``): written as Unix tools write them.

galot's own files go through galot_core.io's temp-file-and-rename, so a crash never leaves
half a file. A path a person gives may be something else, and renaming over it would
replace it: a symlink (to a file kept elsewhere) would become a plain file, a device such as
``/dev/stdout`` or ``/dev/null`` a 0600 file that nobody reads. So:

- ``-`` is standard output;
- a symlink is followed: its target is written (atomically, when that is a regular file), the link stays;
- a device or a FIFO is opened and written, as ``>`` in a shell does;
- a regular file or a new path is replaced atomically, keeping an existing file's permissions
  (a new one gets the usual ``0666 & ~umask``, not the temp file's 0600);
- a directory, or a path that cannot be written, is one line naming it and the fix.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from galot_core.errors import GalotError
from galot_core.io import replace_atomically

STDOUT = "-"


def _refuse(option: str, path: Path, why: str) -> GalotError:
    return GalotError(f"{option}: cannot write {path} ({why}); give a file path, or - for standard output")


def write_text_output(target: str, text: str, option: str = "--csv") -> None:
    """Write ``text`` to what ``target`` names (see the module docstring)."""
    if target == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(target).expanduser()
    try:
        st = os.stat(path) if path.exists() else None  # what a link points to (/dev/stdout: a pipe, a tty)
        real = path.resolve() if path.is_symlink() and (st is None or stat.S_ISREG(st.st_mode)) else path
    except (OSError, RuntimeError) as e:  # a loop of links, a component that is a file
        raise _refuse(option, path, e.__class__.__name__) from None
    try:
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise _refuse(option, path, "a directory")
        if st is not None and not stat.S_ISREG(st.st_mode):
            with open(path, "w", encoding="utf-8") as f:  # a device, a pipe or a FIFO: no rename over it
                f.write(text)
            return
        # A regular file (through its link, which stays) or a new path: replaced atomically.
        _replace(real, text.encode("utf-8"), stat.S_IMODE(st.st_mode) if st is not None else None)
    except OSError as e:
        raise _refuse(option, path, e.strerror or e.__class__.__name__) from None


def _replace(path: Path, data: bytes, mode: int | None) -> None:
    """Atomically replace the regular file (or new path) ``path``, with ``mode`` or the umask's default."""
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    replace_atomically(path, data, mode)
