"""`heartvec SUBCOMMAND ...`: one module per tool, each with `main(argv)`.

Packages register their tools as entry points of the group `heartvec.commands` (their
`pyproject.toml`: `NAME = "package.module:main"`), so this package names none of the services
that add commands. A tool's one-line summary is its module docstring's first line, after the
usage ("`heartvec NAME ...`: summary."), read without importing the module.

This is the one place where errors become exit statuses: an `InputError` is the user's to fix
(exit 2, one line naming the file and the problem); anything else is a bug (a traceback).
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from heartvec.errors import HeartvecError
from heartvec.resources import available_cpus

COMMANDS_GROUP = "heartvec.commands"


def commands() -> dict[str, EntryPoint]:
    """The registered subcommands by name, in the order of their registration."""
    return {entry.name: entry for entry in entry_points(group=COMMANDS_GROUP)}


def summary(entry: EntryPoint) -> str:
    """The subcommand's one-line summary (the module's docstring, as above)."""
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        return ""
    docstring = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or ""
    first = " ".join(docstring.split("\n\n")[0].split())  # the first paragraph, one line
    return first.split("`: ", 1)[-1].rstrip(".")


def _usage() -> str:
    registered = commands()
    width = max(map(len, registered), default=0)
    lines = [f"  {name:<{width}}  {summary(entry)}" for name, entry in registered.items()]
    return (
        "usage: heartvec SUBCOMMAND [options]   (heartvec SUBCOMMAND --help for its options)\n\n"
        "subcommands:\n" + "\n".join(lines)
    )


def run_tool(tool_main: Callable[[Sequence[str]], int], argv: Sequence[str]) -> int:
    """Call a tool's main, turning heartvec's own errors into exit status 2."""
    try:
        return tool_main(argv)
    except HeartvecError as e:
        print(f"heartvec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("heartvec: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `heartvec` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    registered = commands()
    if name not in registered:
        print(f"heartvec: error: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    _threads_within_cpu_quota()
    return run_tool(registered[name].load(), rest)


def _threads_within_cpu_quota() -> None:
    """torch's and numpy's thread pools size themselves by the CPUs the process may run on, not
    by a container's CPU quota (`--cpus 4` on a 64-core host: 64 threads on 4 CPUs' time). Under
    a quota, OMP_NUM_THREADS (unless set) says the quota; before either library is imported."""
    cpus = available_cpus()
    if hasattr(os, "sched_getaffinity") and cpus < len(os.sched_getaffinity(0)):
        os.environ.setdefault("OMP_NUM_THREADS", str(cpus))


def entry() -> None:
    """The console script: `main`, then an exit that skips the interpreter's teardown when
    nothing is left to wait for: tearing down torch, numpy and the rest takes about a second,
    after every file is written and closed. With a child process or a non-daemon thread still
    alive, the normal exit (which waits for them)."""
    status = main()
    waiting = multiprocessing.active_children() or any(
        not thread.daemon
        for thread in threading.enumerate()
        if thread is not threading.main_thread()
    )
    if waiting:
        sys.exit(status)
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    os._exit(status)


if __name__ == "__main__":
    entry()
