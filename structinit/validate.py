"""One way to reject bad input: a ValueError that names the field, the value and what is allowed."""
import argparse
import contextlib
import functools
import math
import os
import typing
import warnings


def check(name: str, value, allowed: str, ok: bool) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed: expected {allowed}")


def choice(name: str, value, options) -> None:
    check(name, value, "one of " + ", ".join(repr(o) for o in options), value in options)


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


def one_line_warnings() -> None:
    """Show this process's warnings as a command line's: `warning: <message>`, one line each
    (not Python's file:line header and source line)."""
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit status 2, like every other check."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def refuse(self, err: Exception):
        """Exit 2 with one line: a value a check refused (its ValueError names it and what is allowed)."""
        self.exit(2, f"{self.prog}: error: {err}\n")
