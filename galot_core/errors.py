"""The one exception type that user mistakes become.

Everything a user can get wrong (a parameter, a dataset folder, a model path, a class
name) is raised as :class:`GalotError` with a single line that names the field and the
fix. The CLI prints that line and exits with status 2; anything else is a bug and keeps
its traceback. A message that echoes input shows it through :func:`show`, shortened.
"""

from __future__ import annotations

import errno
import reprlib
from typing import Any


class GalotError(Exception):
    """A user-facing error: one line naming what is wrong and how to fix it."""

    exit_code = 2


# What to do about a file-system error a person can fix, by errno name.
_OS_FIXES = {
    "EROFS": "the file system is read-only; mount it writable or set experiment.runs_dir (or the output path) "
             "to a writable place",
    "EACCES": "no permission; fix the permissions or use a path you can write",
    "EPERM": "not permitted; fix the permissions or use a path you can write",
    "EISDIR": "a directory is where galot expects a file; move it away (restore the file from a backup)",
    "ENOTDIR": "a path component that should be a folder is a file; move that file away or fix the path "
               "(experiment.runs_dir must be a folder)",
    "EEXIST": "a file is in the way of a folder galot needs; move it away or fix the path",
    "ENOSPC": "the disk is full; free space there and rerun the same command",
    "EDQUOT": "the disk quota is exceeded; free space there and rerun the same command",
    "ENAMETOOLONG": "the path is too long; use a shorter experiment.name or path",
    "ELOOP": "too many levels of symbolic links; fix the link",
}


def os_error(e: OSError) -> GalotError:
    """A file-system error (read-only file system, a directory where a file belongs, permissions)
    as one line: the path, what the system said, and the fix. The CLI turns any OSError that
    reaches it into this line, so such an error is never a traceback."""
    name = errno.errorcode.get(e.errno or 0, "")
    path = e.filename if e.filename is not None else "?"
    why = e.strerror or e.__class__.__name__
    fix = _OS_FIXES.get(name, "check the path and rerun the same command; everything already written is kept")
    return GalotError(" ".join(f"{path}: {why}; {fix}".split()))


# Values echoed in error messages are shortened: a params file must never make galot print
# (or hold in memory) more than a line, whatever it contains.
_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 60, 60, 2, 4, 4


def show(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters, for error messages that echo input."""
    return _REPR.repr(value)


def shown_key(key: Any) -> str:
    """A key as written in params.yaml, shortened like :func:`show` (without quotes)."""
    text = show(str(key))
    return text[1:-1] if text[:1] in "'\"" else text


def show_names(names: Any, limit: int = 5) -> str:
    """At most ``limit`` of ``names``, each quoted and shortened by :func:`show`, then ``… (N more)``:
    a list of class names, files or images a user controls is never printed whole."""
    names = list(names)
    shown = ", ".join(show(str(n)) for n in names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")
