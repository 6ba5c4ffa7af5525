"""`heartvec SUBCOMMAND ...`: one module per tool, each with `main(argv)`.

This is the one place where errors become exit statuses: an `InputError` is the user's to fix
(exit 2, one line naming the file and the problem); anything else is a bug (a traceback).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import import_module

from heartvec.errors import HeartvecError
from heartvec.resources import available_cpus

# subcommand -> (module that implements it, one-line summary)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("heartvec.cli.phantom", "write synthetic whole-heart label volumes"),
    "inspect": ("heartvec.cli.inspect", "shape, spacing, orientation and labels of a volume"),
    "labels": ("heartvec.cli.labels", "print a label table"),
    "prepare": ("heartvec_trainer.prepare", "label volumes -> training .npz files"),
    "split": ("heartvec_trainer.split", "write train.csv / val.csv for a prepared folder"),
    "train": ("heartvec_trainer.train", "train the VecSet autoencoder (alone or under torchrun)"),
    "evaluate": ("heartvec_trainer.evaluate", "metrics JSON of a checkpoint on a split"),
    "export-checkpoint": (
        "heartvec_trainer.export",
        "a weights-only float16 checkpoint for shipping",
    ),
    "reconstruct": ("heartvec.cli.reconstruct", "label volume -> labelled meshes and a report"),
    "serve": ("heartvec_api.cli", "the HTTP API (--embedded: with its own worker, no servers)"),
    "worker": ("heartvec_worker.cli", "a job worker taking reconstructions from the broker"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
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
    if name not in SUBCOMMANDS:
        print(f"heartvec: error: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    _threads_within_cpu_quota()
    module = import_module(SUBCOMMANDS[name][0])
    return run_tool(module.main, rest)


def _threads_within_cpu_quota() -> None:
    """torch's and numpy's thread pools size themselves by the CPUs the process may run on, not
    by a container's CPU quota (`--cpus 4` on a 64-core host: 64 threads on 4 CPUs' time). Under
    a quota, OMP_NUM_THREADS (unless set) says the quota; before either library is imported."""
    cpus = available_cpus()
    if hasattr(os, "sched_getaffinity") and cpus < len(os.sched_getaffinity(0)):
        os.environ.setdefault("OMP_NUM_THREADS", str(cpus))


def entry() -> None:
    """The console script: `main`, then an exit that skips the interpreter's teardown when
    nothing is left to wait for. Tearing down torch, numpy and the rest takes 0.6-1.2 s of a
    `heartvec reconstruct` on a 2-core CPU, after every file is written and closed. With a
    child process or a non-daemon thread still alive, the normal exit (which waits for them)."""
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
