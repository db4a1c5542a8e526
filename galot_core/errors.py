"""The one exception type that user mistakes become.

Everything a user can get wrong (a parameter, a dataset folder, a model path, a class
name) is raised as :class:`GalotError` with a single line that names the field and the
fix. The CLI prints that line and exits with status 2; anything else is a bug and keeps
its traceback.
"""


class GalotError(Exception):
    """A user-facing error: one line naming what is wrong and how to fix it."""

    exit_code = 2
