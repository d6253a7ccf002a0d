"""The ``lwta-zoo`` command: one subcommand a job, each configured by the module that does it."""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from typing import List, Optional

# subcommand -> module that defines ``configure_<subcommand>(parser)``; the function adds the
# subcommand's arguments and sets ``func`` (called with the parsed namespace).
COMMANDS = {
    'demo': 'lwta_zoo.demo',
    'train': 'lwta_zoo.train',
    'eval': 'lwta_zoo.attacks.command',
    'import': 'lwta_zoo.hub',
    'push': 'lwta_zoo.hub',
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='lwta-zoo', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    for name, module in COMMANDS.items():
        configure = getattr(importlib.import_module(module), f'configure_{name}')
        configure(sub.add_parser(name))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(['lwta-zoo', *argv])  # recorded in reports, so numbers say where they came from
    return args.func(args) or 0


if __name__ == '__main__':
    sys.exit(main())
