"""Argument parsing and error policy of the ``apt`` command.

Each command lives in its own module exposing ``register(subparsers)``, which adds its
parser and sets ``func`` to a handler ``(args) -> int``. User mistakes (:class:`UsageError`)
print as one line on stderr and exit 2; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from apt.errors import PluginHookError
from apt.errors import UsageError


__all__ = ["build_parser", "console_main", "main"]

# Command modules, imported lazily by name so that `apt --help` stays fast.
_COMMANDS = ("_train", "_plot", "_generate", "_plugins", "_scaffold", "_data")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage mistake printed as the one line every other user error is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"apt: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from apt import __version__

    parser = ArgumentParser(prog="apt", description="APT: train transformer language models with plugins.")
    parser.add_argument("--version", action="version", version=f"apt-core {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"apt.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"apt.cli.{name}":
                continue  # a command still being written; not an error at runtime
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        return _user_error(exc)
    except PluginHookError as exc:
        # a plugin refusing bad user input (a corrupt checkpoint, a bad path) from inside a hook
        if isinstance(exc.__cause__, UsageError):
            return _user_error(exc.__cause__)
        raise
    except KeyboardInterrupt:
        print("apt: interrupted", file=sys.stderr)
        return 130


def _user_error(exc: BaseException) -> int:
    message = " ".join(str(exc).split())  # one line, whatever the error text holds
    print(f"apt: error: {message}", file=sys.stderr)
    return 2


def console_main() -> NoReturn:
    """The ``apt`` executable and ``python -m apt``: :func:`main`, then exit with its code.

    After a run under torchrun the process leaves without tearing the interpreter down:
    DDP keeps the process group, and the backend's native threads, alive past
    ``destroy_process_group``, and such a thread that releases a Python-owned tensor while
    the interpreter is being finalized aborts the process ("terminate called without an
    active exception"), turning a finished run into a failed one for torchrun.
    """
    try:
        code = main()
    except BrokenPipeError:
        # the reader went away (`apt plugins list | head -1`): end quietly, like other tools;
        # stdout is pointed at /dev/null so that the exit-time flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "torch.distributed" in sys.modules:
        exit_skipping_finalization(code)
    sys.exit(code)


def exit_skipping_finalization(code: int) -> NoReturn:
    """Do what a normal exit does for the program (threads, atexit, flush), then ``os._exit``."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # logging.shutdown and whatever plugins registered
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    console_main()
