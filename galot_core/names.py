"""Names a person gives galot (class names, the experiment's name): what makes two of them the same,
and which characters they may not hold.

Class names are matched the way a person types them: a label ``cat`` in an imported CSV means
the class ``Cat``, and ``ｃａｔ`` (full-width) or ``CAT`` mean it too. So two class names whose
:func:`name_key` is the same (``[Cat, cat]``, ``[Straße, STRASSE]``) cannot both be classes —
every label would go to the first — and are refused wherever class names come from: the
parameters (``data.classes``), an image folder's sub-folders or its ``data.class_names_file``,
a run folder's label batch.

Control and format characters (Unicode categories Cc and Cf: newline, tab, ESC, NUL, the
bidirectional overrides) and the line and paragraph separators U+2028, U+2029 are refused in
names too: they reach a terminal raw, rewrite lines of CSV files and logs, and make two names
that look the same differ. The joiners U+200C and U+200D are the exception: Persian, the Indic
scripts and emoji sequences need them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from galot_core.errors import GalotError, show

_JOINERS = frozenset("\u200c\u200d")  # zero-width non-joiner / joiner: part of some scripts' spelling
# Control, format, and the line / paragraph separators U+2028 / U+2029 (new lines to many tools).
_REFUSED = frozenset({"Cc", "Cf", "Zl", "Zp"})


def name_key(name: str) -> str:
    """What a name means when matching: NFKC-normalised, case-folded, runs of spaces as one space."""
    return " ".join(unicodedata.normalize("NFKC", str(name)).casefold().split())


def control_char(text: str) -> str | None:
    """The first control or format character in ``text`` as ``U+XXXX``, or None when there is none."""
    for ch in str(text):
        if unicodedata.category(ch) in _REFUSED and ch not in _JOINERS:
            return f"U+{ord(ch):04X}"
    return None


def text_problem(field: str, text: str) -> str | None:
    """Why ``text`` (the value of ``field``) cannot be a name shown on a terminal, or None."""
    bad = control_char(text)
    if bad is not None:
        return (f"{field} must not contain control characters (newline, tab, ESC, ...), got {show(text)} "
                f"(a {bad}); remove it")
    return None


def class_names_problem(field: str, names: Sequence[str], sources: Sequence[str] | None = None) -> str | None:
    """Why ``names`` (from ``field``: a key, a folder or a file) cannot be the classes, or None.

    ``sources`` are what a person wrote for each name (an image folder's sub-folder names), shown
    instead of the names in a message about two of them."""
    sources = names if sources is None else sources
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        problem = text_problem(field, sources[i]) or text_problem(field, name)
        if problem:
            return problem
        key = name_key(name)
        if not key:
            return f"{field} must not contain empty class names"
        if key in first:
            a, b = sources[first[key]], sources[i]
            if a == b:
                return f"{field} lists {show(a)} twice; give each class once"
            return (f"{field}: class names {show(a)} and {show(b)} differ only in case, spacing or Unicode form "
                    "(labels are matched case-insensitively, so both would be one class); rename or merge one")
        first[key] = i
    return None


def check_class_names(field: str, names: Sequence[str], sources: Sequence[str] | None = None) -> None:
    """Raise :class:`GalotError` with :func:`class_names_problem`'s line when there is one."""
    problem = class_names_problem(field, names, sources)
    if problem:
        raise GalotError(problem)
