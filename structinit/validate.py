"""One way to reject bad input: a ValueError that names the field, the value and what is allowed."""
import argparse


def check(name: str, value, allowed: str, ok: bool) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed: expected {allowed}")


def choice(name: str, value, options) -> None:
    check(name, value, "one of " + ", ".join(repr(o) for o in options), value in options)


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit status 2, like every other check."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def refuse(self, err: Exception):
        """Exit 2 with one line: a value a check refused (its ValueError names it and what is allowed)."""
        self.exit(2, f"{self.prog}: error: {err}\n")
