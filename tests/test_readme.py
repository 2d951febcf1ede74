"""The README runs as written.

Default (fast) tests: every fenced block of README.md parses (python compiles, yaml loads, bash is valid
``bash -n``); every ``robustkit`` command line, also the one ``torchrun -m robustkit`` starts, is accepted
by the real argparse parser (and torchrun's own flags by torchrun's parser); the names the commands use
(suites, datasets, defenses, the run directories ``robustkit report`` reads) exist; the Python snippet's
run name differs from every run the quickstart and the tour create, so running it after them starts a
run instead of colliding with one (issue 19, item 1).

``slow``: every command and snippet up to the ART section runs as written, in README order, in one
working directory (the quickstart's ``robustkit evaluate`` first), each exiting 0. The commands that need
what a reader brings (ImageNet or CIFAR-10 on disk, eight GPUs, a second node) are listed in
``NEEDS_THE_READERS`` with the reason; the parse test still checks them. The ART section runs in
``tests/test_art_compat.py``, its own-defense snippet in ``tests/test_defense_api.py``.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ART_SECTION = "## Using robustkit with ART"
QUICKSTART = "robustkit evaluate"
# what the slow run cannot do as written on a test machine, and why (checked by the parse test only)
NEEDS_THE_READERS = {
    "pip install .": "the test runs inside the installed checkout",
    "bash scripts/test": "it runs this test suite",
    "robustkit evaluate --model resnet18 --weights my.safetensors --data imagenet": "ImageNet on disk",
    "robustkit evaluate --model mypkg.models:build --data cifar10": "CIFAR-10 on disk and a GPU",
    "torchrun": "eight GPUs (and a second node)",
}


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a markdown page as (language, code), in order."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)]


def command_lines(src: str) -> list[list[str]]:
    """The commands of a bash block as argument lists: continuations joined, comments dropped, ``a && b``
    split into two commands."""
    out: list[list[str]] = []
    for line in src.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            out.append(tokens[:cut])
            tokens = tokens[cut + 1 :]
    return out


def robustkit_argv(cmd: list[str]) -> list[str] | None:
    """The arguments of the ``robustkit`` command ``cmd`` runs (directly or as ``torchrun -m robustkit``)."""
    if cmd[0] == "robustkit":
        return cmd[1:]
    if cmd[0] == "torchrun":
        return cmd[cmd.index("-m") + 2 :]
    return None


def readme_steps(text: str) -> list[tuple[str, str | list[str]]]:
    """Every runnable step in order: ("python", source) or ("command", argv)."""
    steps: list[tuple[str, str | list[str]]] = []
    for lang, src in blocks(text):
        if lang == "python":
            steps.append(("python", src))
        elif lang == "bash":
            steps += [("command", cmd) for cmd in command_lines(src)]
    return steps


@pytest.fixture(scope="module")
def text() -> str:
    return README.read_text()


@pytest.fixture(scope="module")
def commands(text) -> list[list[str]]:
    return [cmd for lang, src in blocks(text) if lang == "bash" for cmd in command_lines(src)]


def test_the_readme_has_the_blocks_the_tests_expect(text, commands):
    langs = [lang for lang, _ in blocks(text)]
    assert langs.count("python") >= 5 and langs.count("bash") >= 6 and "yaml" in langs
    assert commands[0] == ["pip", "install", "."] and commands[1] == QUICKSTART.split()
    assert sum(robustkit_argv(c) is not None for c in commands) >= 15


def test_every_python_block_compiles_and_every_yaml_block_loads(text):
    for i, (lang, src) in enumerate(blocks(text)):
        if lang == "python":
            compile(src, f"README.md block {i}", "exec")
        elif lang == "yaml":
            assert isinstance(yaml.safe_load(src), dict), src


def test_every_bash_block_is_valid_bash(text):
    for lang, src in blocks(text):
        if lang == "bash":
            done = subprocess.run(["bash", "-n"], input=src, capture_output=True, text=True)
            assert done.returncode == 0, (src, done.stderr)
    assert os.access(ROOT / "scripts" / "test", os.R_OK)  # `bash scripts/test`


def parse(argv: list[str]):
    from robustkit.cli import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's way of refusing (exit 2) or of printing --help (exit 0)
        raise AssertionError(f"robustkit {shlex.join(argv)}: the parser exits {exc.code}") from None


def default_run_name(args) -> str:
    """The run directory name ``robustkit evaluate`` gives these arguments (no --name): model-data-suite."""
    from robustkit.models.loading import default_model_for

    model = args.model or default_model_for(args.data)
    return f"{model}-{args.data}-{args.suite}"


def test_every_robustkit_command_is_accepted_and_names_what_exists(commands):
    from robustkit.data.loading import manifest_names
    from robustkit.data.synthetic import BUILTIN
    from robustkit.defenses.base import DEFENSES
    from robustkit.evaluation.defended import is_factory, split_defenses
    from robustkit.evaluation.suite import builtin_suites

    datasets = set(BUILTIN.names()) | set(manifest_names())
    runs: list[str] = []
    checked = 0
    for cmd in commands:
        argv = robustkit_argv(cmd)
        if argv is None:
            continue
        args = parse(argv)
        checked += 1
        if args.command in ("evaluate", "train"):
            assert args.data in datasets, (cmd, args.data)
        if args.command == "evaluate":
            assert args.suite in builtin_suites(), (cmd, args.suite)
            specs = split_defenses(args.defense) if args.defense else []
            if specs and not is_factory(specs[0]):
                assert all(s in DEFENSES for s in specs), (cmd, specs)
            if not args.name and not args.defense:
                runs.append(default_run_name(args))
        elif args.command == "train":
            assert args.defense in DEFENSES, cmd
        elif args.command == "report":  # it reads runs the commands above it created
            for run in args.runs:
                assert Path(run).parent == Path("reports"), run
                assert Path(run).name in runs, (run, runs)
    assert checked == sum(robustkit_argv(c) is not None for c in commands)


def test_torchruns_own_flags_are_accepted(commands):
    from torch.distributed.run import get_args_parser

    runs = [cmd for cmd in commands if cmd[0] == "torchrun"]
    assert runs
    for cmd in runs:
        args = get_args_parser().parse_args(cmd[1:])
        assert args.module and args.training_script == "robustkit", cmd


def test_the_python_snippet_does_not_collide_with_the_tours_runs(text, commands):
    """After the quickstart, ``robustkit.evaluate(...)`` with another limit under the quickstart's run name
    was refused (RunExistsError): the snippet names a run of its own."""
    section = text.split("### Python API", 1)[1]
    src = next(src for lang, src in blocks(section) if lang == "python")
    call = next(
        node
        for node in ast.walk(ast.parse(src))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "robustkit.evaluate"
    )
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    taken = {
        default_run_name(parse(argv))
        for cmd in commands
        if (argv := robustkit_argv(cmd)) and argv[:1] == ["evaluate"] and "--name" not in argv
    }
    assert "shapes-resnet-shapes-quick" in taken  # the quickstart's
    assert kwargs.get("name") and kwargs["name"] not in taken, (kwargs, taken)


# ------------------------------------------------------------------------ slow: everything, in order
MYMODULE = """
import torch
from torch import nn

import robustkit


class Quantize(nn.Module):
    def forward(self, x):
        return torch.round(x * 8) / 8


def build():
    model = nn.Sequential()
    model.add_module("preprocess", Quantize())
    model.add_module("classifier", robustkit.load_zoo_model("shapes-resnet"))
    return model
"""


def needs_the_reader(step: str | list[str]) -> str | None:
    line = step if isinstance(step, str) else shlex.join(step)
    return next((why for start, why in NEEDS_THE_READERS.items() if line.startswith(start)), None)


def steps_before_art() -> list[tuple[str, str | list[str]]]:
    return readme_steps(README.read_text().split(ART_SECTION, 1)[0])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """One working directory for the whole README, as a reader's; ``mymodule`` is the reader's defense."""
    path = tmp_path_factory.mktemp("readme")
    (path / "mymodule.py").write_text(MYMODULE)
    return path


def test_the_slow_run_skips_only_what_needs_the_reader():
    skipped = [s for _, s in steps_before_art() if needs_the_reader(s)]
    assert len(skipped) == 6, skipped  # pip install, scripts/test, ImageNet, CIFAR-10, two torchrun lines
    assert len(steps_before_art()) - len(skipped) >= 12


@pytest.mark.slow
@pytest.mark.parametrize(
    "index", range(len(steps_before_art())), ids=[f"step{i}" for i in range(len(steps_before_art()))]
)
def test_the_readme_runs_in_order(index, workspace):
    kind, step = steps_before_art()[index]
    why = needs_the_reader(step)
    if why:
        pytest.skip(f"needs {why}")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    if kind == "python":
        argv = [sys.executable, "-c", step]
    else:
        argv = [sys.executable, "-m", "robustkit", *robustkit_argv(step)]
    done = subprocess.run(argv, cwd=workspace, env=env, capture_output=True, text=True)
    assert done.returncode == 0, (step, done.stdout[-3000:], done.stderr[-3000:])
    if kind == "command" and step[:2] == ["robustkit", "evaluate"] and "--defense" not in step:
        assert "report:" in done.stdout
