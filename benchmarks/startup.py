"""Startup time of the ``robustkit`` command: ``--help``, ``--version``, ``list`` and ``import robustkit``.

Each command runs in a fresh subprocess (``python -m robustkit ...``, what the ``robustkit`` console script
runs, with the checkout under test first on ``PYTHONPATH``), first once untimed (the warm-up: the OS file
cache, and the cached names of ``list``), then ``--rounds`` times, the commands interleaved round by round
so that every command sees the same load; the table shows the median and (min, max) wall time per command.
``list (cold)`` runs ``list`` against an empty cache directory (``$ROBUSTKIT_CACHE``) each round: what the
first ``list`` after an install or an edit of robustkit costs. One more run of each command under
``python -X importtime`` records which heavy libraries it imports.

    python benchmarks/startup.py                               # this checkout
    python benchmarks/startup.py --root /path/to/other/checkout --out /tmp/startup-main.json

The target of issue 19 (``--help`` and ``list`` under 1 s, warm) is printed as ok / MISS; the exit
code is 0 either way. Never a timed test: the machine's load moves single runs by tens of percent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "timm", "kornia", "art", "pytorchvideo", "cv2", "matplotlib", "av")
COMMANDS: dict[str, list[str]] = {
    "robustkit --help": ["-m", "robustkit", "--help"],
    "robustkit evaluate --help": ["-m", "robustkit", "evaluate", "--help"],
    "robustkit --version": ["-m", "robustkit", "--version"],
    "robustkit list": ["-m", "robustkit", "list"],
    "robustkit list (cold)": ["-m", "robustkit", "list"],
    'python -c "import robustkit"': ["-c", "import robustkit"],
}
TARGET_S = {"robustkit --help": 1.0, "robustkit list": 1.0}


def environment(root: Path, cache: str) -> dict[str, str]:
    env = dict(os.environ, ROBUSTKIT_CACHE=cache)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def run_once(
    args: list[str], env: dict[str, str], root: Path, *, importtime: bool = False
) -> tuple[float, str]:
    """(wall seconds, stderr) of ``python ARGS`` run in ``root`` (``python -m`` and ``-c`` put the working
    directory first on sys.path); fails loudly on a non-zero exit."""
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), *args]
    start = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    return seconds, done.stderr


def heavy_imports(stderr: str) -> list[str]:
    """The HEAVY top-level packages named in ``-X importtime`` output."""
    names = {
        line.rpartition("|")[2].strip() for line in stderr.splitlines() if line.startswith("import time:")
    }
    return [name for name in HEAVY if name in names]


def measure(root: Path, rounds: int) -> dict[str, dict]:
    scratch = Path(tempfile.mkdtemp(prefix="robustkit-startup-"))
    results: dict[str, dict] = {name: {"seconds": []} for name in COMMANDS}

    def env_for(name: str) -> dict[str, str]:
        cache = tempfile.mkdtemp(dir=scratch) if name.endswith("(cold)") else str(scratch / "warm")
        return environment(root, cache)

    for name, args in COMMANDS.items():  # warm-up, and which heavy libraries each command imports
        run_once(args, env_for(name), root)
        results[name]["imports"] = heavy_imports(run_once(args, env_for(name), root, importtime=True)[1])
    for r in range(rounds):
        names = list(COMMANDS)
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order each round
            results[name]["seconds"].append(run_once(COMMANDS[name], env_for(name), root)[0])
    shutil.rmtree(scratch, ignore_errors=True)
    for row in results.values():
        row["median_s"] = statistics.median(row["seconds"])
        row["min_s"], row["max_s"] = min(row["seconds"]), max(row["seconds"])
    return results


def git_commit(root: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose robustkit is timed")
    parser.add_argument("--rounds", type=int, default=7, help="timed runs per command (default: 7)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup.json")
    args = parser.parse_args()
    root = args.root.resolve()
    bare = statistics.median(
        run_once(["-c", "pass"], environment(root, tempfile.gettempdir()), root)[0] for _ in range(3)
    )
    results = measure(root, args.rounds)

    print(f"robustkit startup, {root} ({args.rounds} rounds; bare python: {bare:.2f} s)")
    print(f"{'command':32} {'median':>8} {'(min, max)':>16}  target  heavy imports")
    for name, row in results.items():
        target = TARGET_S.get(name)
        verdict = "" if target is None else ("ok" if row["median_s"] < target else "MISS")
        spread = f"({row['min_s']:.2f}, {row['max_s']:.2f})"
        heavy = ", ".join(row["imports"]) or "-"
        print(f"{name:32} {row['median_s']:7.2f}s {spread:>16}  {verdict:6}  {heavy}")
    record = {
        "root": str(root),
        "commit": git_commit(root),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg(),
        "rounds": args.rounds,
        "bare_python_s": bare,
        "targets_s": TARGET_S,
        "commands": results,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
