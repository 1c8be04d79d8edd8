"""`structinit` command line: inspect-init, train, report, sync, rank, fetch."""
from __future__ import annotations

import argparse
import sys

from structinit.commands import fetch, inspect_init, rank, report, sync, train
from structinit.validate import Parser, one_line_warnings

COMMANDS = {"inspect-init": inspect_init, "train": train, "report": report, "sync": sync, "rank": rank,
            "fetch": fetch}  # each: HELP, add_arguments(parser), run(args, parser) -> exit status


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="structinit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.HELP)
        command.add_arguments(p)
        p.set_defaults(run=command.run, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # told by the subcommand's parser, which knows its flags (and the nearest to a typo)
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    one_line_warnings()
    return args.run(args, args.parser)


if __name__ == "__main__":
    sys.exit(main())
