"""Regenerate the example reports in ``reports/examples/`` from the built-in data and models.

    python -m robustkit.report.examples            # everything whose recipe and data exist
    python -m robustkit.report.examples --only image --limit 32

Each example is an ordinary evaluation (the built-in zoo model for its dataset, seed 0) written to
``reports/<name>/`` like any run; its report is copied to ``reports/examples/<name>.html``. Then all
runs are rendered side by side into ``reports/examples/comparison.html``. An example whose recipe
(``attacks/<suite>.yaml``) or dataset is not available is skipped with a message, so the command picks
up new recipes as they land.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .render import render_report

log = logging.getLogger("robustkit.report.examples")


@dataclass(frozen=True)
class Example:
    name: str
    group: str
    data: str
    suite: str
    limit: int
    batch_size: int = 64
    gallery: int = 6


EXAMPLES = (
    Example("image-shapes-quick", "image", "shapes", "quick", limit=64),
    Example("physical-faces", "physical", "faces", "physical", limit=16, batch_size=16, gallery=4),
    Example("physical-signs", "physical", "signs", "physical", limit=16, batch_size=16, gallery=4),
    Example("video-shapes", "video", "shapes-video", "video", limit=16, batch_size=16, gallery=4),
)


def available(ex: Example) -> str | None:
    """Why ``ex`` cannot run here, or None when its recipe and dataset both exist."""
    from ..data.loading import load_dataset
    from ..evaluation.suite import load_suite

    try:
        load_suite(ex.suite)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        return f"recipe '{ex.suite}' is not available ({exc})"
    try:
        load_dataset(ex.data, "test")
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        return f"dataset '{ex.data}' is not available ({exc})"
    return None


def regenerate(
    out: Path,
    runs: Path,
    *,
    only: Sequence[str] | None = None,
    limit: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> list[Path]:
    """Run every available example, copy its report to ``out`` and render the comparison."""
    from ..evaluation.config import RunConfig
    from ..evaluation.runner import run

    out.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    written: list[Path] = []
    for ex in EXAMPLES:
        if only and ex.group not in only and ex.name not in only:
            continue
        why = available(ex)
        if why:
            log.warning("skipping %s: %s", ex.name, why)
            continue
        t0 = time.perf_counter()
        log.info("running %s (%s on %s, %d samples)", ex.name, ex.suite, ex.data, limit or ex.limit)
        config = RunConfig(data=ex.data, suite=ex.suite, out=runs, name=ex.name, device=device,
                           batch_size=ex.batch_size, limit=limit or ex.limit, seed=0, gallery=ex.gallery,
                           overwrite=True, progress=progress, report=False)  # fmt: skip
        result = run(config)
        target = out / f"{ex.name}.html"
        render_report([result.run_dir], target)
        log.info(
            "%s: %.0f s, report %s (%.0f KB)",
            ex.name,
            time.perf_counter() - t0,
            target,
            target.stat().st_size / 1024,
        )
        done.append(result.run_dir)
        written.append(target)
    if len(done) > 1:
        target = render_report(done, out / "comparison.html", title="robustkit example runs side by side")
        log.info("comparison: %s (%.0f KB)", target, target.stat().st_size / 1024)
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m robustkit.report.examples", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reports/examples"), help="where the HTML reports go"
    )
    parser.add_argument("--runs", type=Path, default=Path("reports"), help="parent of the run directories")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated groups or names: "
        + ", ".join(sorted({e.group for e in EXAMPLES} | {e.name for e in EXAMPLES})),
    )
    parser.add_argument("--limit", type=int, default=None, help="samples per run (default: per example)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be a positive integer")
    written = regenerate(
        args.out, args.runs, only=only, limit=args.limit, device=args.device, progress=not args.quiet
    )
    if not written:
        print("no example could run (see the messages above)", file=sys.stderr)
        return 1
    for p in written:
        print(p)
    total = sum(p.stat().st_size for p in written)
    print(f"{len(written)} reports, {total / 1024:.0f} KB in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
