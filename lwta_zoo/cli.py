"""The ``lwta-zoo`` command: one subcommand a job, each configured by the module that does it.

Every subcommand fails the same way: one line ``lwta-zoo <command>: error: <what>`` on stderr
and exit status 2, whether argparse, the options' ranges or the work itself refused the input;
``--debug`` prints the traceback first.
"""
from __future__ import annotations

import argparse
import importlib
import math
import shlex
import sys
import traceback
from typing import Any, Callable, List, Optional

# subcommand -> module that defines ``configure_<subcommand>(parser)``; the function adds the
# subcommand's arguments and sets ``func`` (called with the parsed namespace).
COMMANDS = {
    'demo': 'lwta_zoo.demo',
    'train': 'lwta_zoo.train',
    'eval': 'lwta_zoo.attacks.command',
    'import': 'lwta_zoo.hub',
    'push': 'lwta_zoo.hub',
    'leaderboard': 'lwta_zoo.leaderboard',
    'compare': 'lwta_zoo.attacks.compare',
    'margins': 'lwta_zoo.attacks.margins',
}

# Numeric options are counts (ints >= 1) or positive finite floats, except these, which may be 0.
ZERO_ALLOWED = {'seed', 'random_inputs'}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the one line every other error is (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f'{self.prog}: error: {message}\n')


def _add_debug(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument('--debug', action='store_true', default=default,
                        help='on an error, print the traceback before the one-line message')


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog='lwta-zoo', description=__doc__)
    _add_debug(parser, False)
    sub = parser.add_subparsers(dest='command', required=True)
    for name, module in COMMANDS.items():
        configure = getattr(importlib.import_module(module), f'configure_{name}')
        child = sub.add_parser(name)
        configure(child)
        _add_debug(child, argparse.SUPPRESS)  # `lwta-zoo --debug CMD` and `lwta-zoo CMD --debug` both work
    return parser


def check_ranges(args: argparse.Namespace) -> None:
    """Refuse numeric options out of range (``--n 0``, ``--adaptive-steps -1``, ``--eval-tau inf``)."""
    for dest, value in sorted(vars(args).items()):
        option = '--' + dest.replace('_', '-')
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int) and value < (0 if dest in ZERO_ALLOWED else 1):
            raise ValueError(f'{option} must be >= {0 if dest in ZERO_ALLOWED else 1}, got {value}')
        if isinstance(value, float) and not (math.isfinite(value) and value > 0):
            raise ValueError(f'{option} must be a finite number > 0, got {value}')


def one_line(error: BaseException) -> str:
    """An exception as one line: its message with line breaks folded, named by type unless it is the user's
    to fix (ValueError, OSError: bad input, missing files)."""
    message = ' '.join(str(error).split())
    if isinstance(error, (ValueError, OSError)) and message:
        return message
    return f'{type(error).__name__}: {message} (an unexpected error: --debug shows where)'


def run(func: Callable[[argparse.Namespace], Optional[int]], args: argparse.Namespace, prog: str) -> int:
    """``func(args)``, with every error turned into one line on stderr and exit status 2, and Ctrl-C that the
    command does not handle itself into one line and exit status 130 (128 + SIGINT)."""
    try:
        check_ranges(args)
        return func(args) or 0
    except KeyboardInterrupt:
        if getattr(args, 'debug', False):
            traceback.print_exc()
        print(f'{prog}: interrupted (Ctrl-C)', file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (the one error path: a message, not a traceback)
        if getattr(args, 'debug', False):
            traceback.print_exc()
        print(f'{prog}: error: {one_line(e)}', file=sys.stderr)
        return 2


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = build_parser().parse_known_args(argv)
    prog = f'lwta-zoo {args.command}'
    if hasattr(args, 'overrides'):  # recipe key=value after an option (argparse takes them only before)
        args.overrides = [*args.overrides, *(u for u in unknown if '=' in u and not u.startswith('-'))]
        unknown = [u for u in unknown if u not in args.overrides]
    if unknown:  # argparse would blame the top-level parser; the subcommand is the one that has no such option
        print(f'{prog}: error: unrecognized arguments: {" ".join(unknown)}', file=sys.stderr)
        return 2
    args.command_line = shlex.join(['lwta-zoo', *argv])  # recorded in reports, so numbers say where they came from
    return run(args.func, args, prog)


if __name__ == '__main__':
    sys.exit(main())
