"""What a run shows while it works: tqdm's bar on a terminal; elsewhere (a log file, a pipe, CI, a
notebook's captured stderr) one log line per stage, so that a long run is never silent.

The runner hands a :class:`Progress` to the batch loop as its ``bar``: ``set_description(stage)`` starts a
stage (the clean pass, then each attack in each view), ``update(n)`` counts samples, ``close()`` ends the
last stage. Lines go to the ``robustkit`` logger at INFO, which the CLI shows at its default level.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def is_terminal(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class Progress:
    """Samples done over ``stages`` stages of ``per_stage`` samples each (the run's shard).

    ``show``: whether anything is shown at all (``--quiet`` and ranks other than 0 show nothing).
    ``lines``: one log line per finished stage instead of the bar (default: when stderr, where the bar
    would go, is not a terminal).
    """

    def __init__(
        self, run_name: str, stages: int, per_stage: int, *, show: bool, lines: bool | None = None
    ) -> None:
        self.lines = show and (not is_terminal(sys.stderr) if lines is None else lines)
        self.bar = tqdm(
            total=stages * per_stage, unit="sample", disable=not show or self.lines, dynamic_ncols=True
        )
        self.run_name, self.stages, self.per_stage = run_name, stages, per_stage
        self.index = 0
        self.stage: str | None = None
        self.count = 0
        self.started = self.stage_started = time.perf_counter()
        if self.lines:
            log.info(
                "run %s: %d samples, %d stages (the clean pass, then each attack)",
                run_name,
                per_stage,
                stages,
            )

    def set_description(self, name: str) -> None:
        self._end_stage()
        self.stage, self.count, self.index = name, 0, self.index + 1
        self.stage_started = time.perf_counter()
        self.bar.set_description(name)

    def update(self, n: int) -> None:
        self.count += n
        self.bar.update(n)

    def close(self) -> None:
        self._end_stage()
        self.bar.close()

    def _end_stage(self) -> None:
        if self.stage is None:
            return
        if self.lines:
            now = time.perf_counter()
            log.info(
                "[%d/%d] %s: %d samples in %.1f s (%.0f s so far)",
                self.index,
                self.stages,
                self.stage,
                self.count,
                now - self.stage_started,
                now - self.started,
            )
        self.stage = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if kind is not None:  # interrupted or failed: the stage did not end
            self.stage = None
        self.close()
