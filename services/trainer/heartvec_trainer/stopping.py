"""When training stops before its epochs are done: a time limit, or a signal from a scheduler.

A scheduler asks a job to end with SIGTERM (SLURM at its time limit, at preemption, on
`scancel`), or with SIGUSR1 some minutes before the limit (`#SBATCH --signal=USR1@300`). Both
are caught: the step in progress finishes, every rank agrees on the step to stop after,
`checkpoint-last.pt` is saved with the position in the epoch, and `heartvec train` exits with
`EXIT_INTERRUPTED`, so that a job script can requeue itself and `--resume` continues from
that step.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist

from heartvec_trainer.distributed import Runtime

EXIT_INTERRUPTED = 75
"""Exit status of `heartvec train` stopped by SIGTERM or SIGUSR1 after saving (sysexits.h's
EX_TEMPFAIL: try again, with --resume)."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """While entered, SIGTERM and SIGUSR1 record a request to stop (`received`) instead of
    ending the process; DataLoader workers started with `worker_init_fn` leave them to it.

    torchrun signals a rank's whole process group, SLURM every process of the job step; a
    DataLoader worker ended by SIGTERM (or by SIGUSR1, whose default is to end the process)
    makes its parent's DataLoader raise at once, before the step finishes and saves. So the
    workers ignore both while the parent trains, and SIGTERM ends them again once the parent has
    left the context, which is how multiprocessing ends persistent workers at its exit. Only the
    main thread can install handlers; elsewhere the signals keep their usual effect.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._parent_done = multiprocessing.Event()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._catch) for s in STOP_SIGNALS}
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        self._parent_done.set()

    def __getstate__(self) -> dict[str, object]:
        """What a spawned worker needs (the parent's handlers may not pickle)."""
        return {"received": None, "_previous": {}, "_parent_done": self._parent_done}

    def _catch(self, number: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(number).name

    def worker_init_fn(self, worker_id: int) -> None:
        """DataLoader `worker_init_fn`: stopping is the parent's (see the class)."""
        parent_done = self._parent_done

        def on_signal(number: int, frame: FrameType | None) -> None:
            if number == signal.SIGTERM and parent_done.is_set():
                signal.signal(number, signal.SIG_DFL)
                os.kill(os.getpid(), number)

        for number in STOP_SIGNALS:
            signal.signal(number, on_signal)


class TrainingClock:
    """Training time against `--time-limit`, counting a resumed run's earlier time.

    `fraction()` is how far the learning rate's time schedule has gone (0 to 1). A run resumed
    with another time limit (a longer lease, a limit added or dropped) keeps its schedule
    continuous: it goes on from where the saved run was and reaches 1 at the new limit, instead
    of jumping back up the cosine (elapsed / new limit); with no limit it stays where it was.
    `state()` is saved in each checkpoint and `resume()` reads it back.
    """

    def __init__(self, limit_s: float | None) -> None:
        self.limit_s = limit_s
        self.earlier_s = 0.0
        self.started = time.monotonic()
        # (elapsed s, fraction) the schedule continues from; None: elapsed / limit from 0
        self.base: tuple[float, float] | None = None

    def start(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.earlier_s + time.monotonic() - self.started

    def fraction(self, elapsed_s: float | None = None) -> float:
        elapsed = self.elapsed() if elapsed_s is None else elapsed_s
        if self.base is None:
            return min(1.0, elapsed / self.limit_s) if self.limit_s else 0.0
        from_s, from_fraction = self.base
        if not self.limit_s:
            return from_fraction
        if self.limit_s <= from_s:
            return 1.0
        gone = (elapsed - from_s) / (self.limit_s - from_s)
        return min(1.0, from_fraction + (1.0 - from_fraction) * max(0.0, gone))

    def up(self) -> bool:
        return self.limit_s is not None and self.elapsed() >= self.limit_s

    def state(self) -> dict[str, Any]:
        return {"limit_s": self.limit_s, "base": list(self.base) if self.base else None}

    def resume(
        self, elapsed_s: float, saved: dict[str, Any] | None, saved_limit_s: float | None
    ) -> None:
        """Continue a saved run: `saved` is its `state()` (None in checkpoints from before it
        was kept: then the saved run's own time limit, `saved_limit_s`, and no base)."""
        self.earlier_s = elapsed_s
        before = TrainingClock(saved["limit_s"] if saved else saved_limit_s)
        if saved and saved.get("base"):
            before.base = (float(saved["base"][0]), float(saved["base"][1]))
        if before.limit_s == self.limit_s:
            self.base = before.base
        else:
            self.base = (elapsed_s, before.fraction(elapsed_s))


class StopCheck:
    """Whether to stop after the current step, the same answer on every rank.

    `time_up` and `signal` are sticky once set. Under DDP each check is one small all-reduce
    (max) of every rank's view: a signal reaches the ranks at slightly different times, and
    their clocks differ by a little, but all must stop after the same step or the next
    collective waits for ever.
    """

    def __init__(self, clock: TrainingClock, signals: StopSignals, runtime: Runtime) -> None:
        self.clock = clock
        self.signals = signals
        self.runtime = runtime
        self.time_up = False
        self.signal: str | None = None

    @property
    def stopping(self) -> bool:
        return self.time_up or self.signal is not None

    def check(self) -> bool:
        """Update from this rank's clock and signals (and, under DDP, everyone's)."""
        time_up, received = self.clock.up(), self.signals.received
        if self.runtime.distributed:
            views = torch.tensor(
                [float(time_up), float(received is not None)],
                device=self.runtime.collective_device,
            )
            dist.all_reduce(views, op=dist.ReduceOp.MAX)
            time_up = bool(views[0].item())
            if views[1].item() and received is None:
                received = "a signal to another rank"
        self.time_up = self.time_up or time_up
        self.signal = self.signal or received
        return self.stopping
