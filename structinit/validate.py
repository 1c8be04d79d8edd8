"""One way to reject bad input: a ValueError that names the field, the value and what is allowed."""
import argparse
import contextlib
import functools
import math
import os
import string
import typing
import warnings


def check(name: str, value, allowed: str, ok: bool) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed: expected {allowed}")


def choice(name: str, value, options) -> None:
    check(name, value, "one of " + ", ".join(repr(o) for o in options), value in options)


def nearest(name: str, names, n: int = 3) -> list[str]:
    """Up to `n` of `names` closest to `name` (a typo's likely meaning), closest first."""
    import difflib

    names = list(names)
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
    leaf = name.rpartition(".")[2]  # a field given without its section, or in the wrong one
    return close + [k for k in names if k.rpartition(".")[2] == leaf and k not in close][:n - len(close)]


@functools.cache
def _float_fields(cls) -> tuple[tuple[str, bool], ...]:
    """(name, may be None) of each float field of a dataclass."""
    hints = typing.get_type_hints(cls)
    return tuple((name, type(None) in typing.get_args(hint)) for name, hint in hints.items()
                 if hint is float or float in typing.get_args(hint))


def finite(obj) -> None:
    """Every float field of the dataclass `obj` holds a finite number (or None, where its type
    allows it): inf and NaN pass most range checks (inf > 0), never a run."""
    for name, optional in _float_fields(type(obj)):
        value = getattr(obj, name)
        check(name, value, "a finite number" + (" or None" if optional else ""), (value is None and optional) or (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)))


NAME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._-+=")
NAME_LIMIT = 100  # characters: a run's folder name, with room for what Ray and MLflow add around it


def component(name: str, value) -> None:
    """A name that becomes one path component (a run, an experiment, a study, an execution): ASCII
    letters, digits and . _ - + =, not starting with . or -, at most NAME_LIMIT characters. So it
    cannot leave its folder (`/`, `..`), name another (an absolute path), or be refused where it is
    used (Ray Train fails on non-ASCII names, file systems on over-long ones; a quote breaks
    MLflow's run search)."""
    check(name, value, f"one path component of ASCII letters, digits and . _ - + = (not starting with . or -, at "
          f"most {NAME_LIMIT} characters)", isinstance(value, str) and 0 < len(value) <= NAME_LIMIT
          and set(value) <= NAME_CHARACTERS and value[0] not in ".-")


def writable(name: str, path, folder: bool = False) -> None:
    """`path` can be created (or, where it exists, written) by this process, checked without
    creating anything: a file in an existing folder, as a SQLite store must be; with `folder` a
    folder, made with any missing folders above it (its nearest existing one must be a folder this
    process can write in: no file in its way)."""
    check(name, path, "a non-empty path without control characters", isinstance(path, str) and bool(path)
          and path.isprintable())
    full = os.path.abspath(os.path.expanduser(path))
    check(name, path, "a path of at most 4096 bytes, each part at most 255", len(full.encode()) < 4096
          and all(len(part.encode()) <= 255 for part in full.split(os.sep)))
    if os.path.exists(full):
        kind = os.path.isdir(full)
        check(name, path, "a folder (it is created if missing), not a file" if folder else "a file, not a folder",
              kind == folder)
        check(name, path, f"a {'folder' if folder else 'file'} this process can write (it is read-only)",
              _can_write(full))
        return
    parent = os.path.dirname(full)
    if not folder:
        check(name, path, f"a file in an existing folder ({parent} is missing)", os.path.lexists(parent))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    check(name, path, f"a path that can be created ({parent} is a file, not a folder)", os.path.isdir(parent))
    check(name, path, f"a path this process can create ({parent} is read-only)", _can_write(parent))


def _can_write(path: str) -> bool:
    """Whether this process may write `path` (a folder: create in it). Root passes every permission
    check, so for root a path no write bit is set on counts as read-only too: it was made so."""
    mode = os.W_OK | (os.X_OK if os.path.isdir(path) else 0)
    return os.access(path, mode) and (os.geteuid() != 0 or bool(os.stat(path).st_mode & 0o222))


def sqlite_path(url: str) -> str | None:
    """The file an SQLite URL (sqlite:///PATH) names; None for any other URL."""
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else None


def sqlite_store(name: str, url: str) -> None:
    """The file of an SQLite URL, where it exists, is a database: a damaged one is refused naming
    it, before any reader or writer (MLflow, Optuna) stumbles on it."""
    import sqlite3

    path = sqlite_path(url)
    if path is None or not os.path.exists(path):
        return
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as err:
        check(name, path, f"an SQLite database (sqlite3: {err})", False)


def database_url(name: str, url: str) -> None:
    """`url` is an SQLAlchemy URL (sqlite:////abs/optuna.db, postgresql://user@host/db)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError, TypeError):
        check(name, url, "an SQLAlchemy URL such as sqlite:////abs/optuna.db or postgresql://user@host/db", False)


def one_line_warnings() -> None:
    """Show this process's warnings as a command line's: `warning: <message>`, one line each
    (not Python's file:line header and source line)."""
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit status 2, like every other check;
    an unknown flag is told with the nearest ones, and a flag is never taken for an abbreviation
    of another (`--init.target` for `--init.target_mass`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if message.startswith("unrecognized arguments: "):
            flags = [a.partition("=")[0] for a in message.split(": ", 1)[1].split() if a.startswith("--")]
            close = [n for flag in flags for n in nearest(flag, self._option_string_actions)]
            message += f" (nearest: {', '.join(dict.fromkeys(close))})" if close else ""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def refuse(self, err: Exception):
        """Exit 2 with one line: a value a check refused (its ValueError names it and what is allowed)."""
        self.exit(2, f"{self.prog}: error: {err}\n")
