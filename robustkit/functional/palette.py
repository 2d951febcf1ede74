"""Printable-colour palettes: the shipped measured set, palette files, and palettes read from a photo of a
printed colour chart.

A palette is a float tensor (P, 3) of RGB colours in [0, 1] that a given printer (and the camera that
later sees the print) actually reproduces. Sharif et al. (2016) and RP2 measure it by printing a chart
of colours and photographing it; the non-printability score then pulls every pixel of an artefact
towards one of these colours.

Palettes are named (``sharif30``: the 30 triplets measured for the eyeglass attack and used by the
adversarial-patch literature; ``grid27``: every combination of 0.1 / 0.5 / 0.9 per channel, robustkit's
earlier default), or read from a text file of one ``r, g, b`` triplet per line (floats in [0, 1], or
0-255 integers; ``#`` starts a comment) as :func:`save_palette` and ``robustkit palette`` write it.
"""

from __future__ import annotations

import functools
import itertools
from importlib import resources
from pathlib import Path

import torch

from ..errors import ConfigError, InputError

DEFAULT_PALETTE = "sharif30"
PALETTE_FILES = {"sharif30": "sharif30.txt"}


def palette_names() -> list[str]:
    return [*PALETTE_FILES, "grid27"]


def grid_palette(levels: tuple[float, ...] = (0.1, 0.5, 0.9)) -> torch.Tensor:
    """Every combination of ``levels`` per channel (27 colours for three levels), (P, 3)."""
    return torch.tensor(list(itertools.product(levels, repeat=3)), dtype=torch.float32)


def parse_palette(text: str, source: str = "palette") -> torch.Tensor:
    """The colours of a palette file's text: one ``r, g, b`` (or ``r g b``) per line, (P, 3) in [0, 1].

    Values are floats in [0, 1], or all of them 0-255 levels (any value above 1 says so)."""
    rows = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].replace(",", " ").split()
        if not line:
            continue
        if len(line) != 3:
            raise InputError(f"{source}, line {n}: expected three numbers 'r, g, b', got {raw.strip()!r}")
        try:
            rows.append([float(v) for v in line])
        except ValueError:
            raise InputError(f"{source}, line {n}: expected numbers, got {raw.strip()!r}") from None
    if not rows:
        raise InputError(f"{source} holds no colour (expected one 'r, g, b' triplet per line)")
    pal = torch.tensor(rows, dtype=torch.float32)
    if not torch.isfinite(pal).all() or pal.min() < 0:
        raise InputError(f"{source}: colours must be finite and >= 0")
    if pal.max() > 1:
        if pal.max() > 255:
            raise InputError(
                f"{source}: colours are floats in [0, 1] or 8-bit levels 0-255, got {pal.max():g}"
            )
        pal = pal / 255
    return pal


def load_palette(
    spec: str | Path | torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A palette (P, 3) from a name (:func:`palette_names`), a file path, a tensor, or ``None`` (the
    default, ``sharif30``)."""
    if isinstance(spec, torch.Tensor):
        pal = spec.detach().float()
        if pal.ndim != 2 or pal.shape[1] != 3 or pal.shape[0] < 1:
            raise ConfigError(f"a palette is a (P, 3) tensor of RGB colours, got shape {tuple(pal.shape)}")
        return pal.to(device=device, dtype=dtype)
    name = DEFAULT_PALETTE if spec is None else str(spec)
    if name == "grid27":
        pal = grid_palette()
    elif name in PALETTE_FILES:
        pal = _builtin(name)
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"palette {name!r} is neither a built-in palette ({', '.join(palette_names())}) nor a file; "
                "make one from a photo of a printed colour chart with `robustkit palette CHART.png --grid RxC`"
            )
        pal = _from_file(str(path.resolve()), path.stat().st_mtime_ns)
    return pal.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _from_file(path: str, _mtime_ns: int) -> torch.Tensor:
    """A palette file parsed once per content version (its modification time is part of the key)."""
    return parse_palette(Path(path).read_text(), path)


@functools.cache
def _builtin(name: str) -> torch.Tensor:
    text = resources.files("robustkit.functional").joinpath("palettes", PALETTE_FILES[name]).read_text()
    return parse_palette(text, name)


def format_palette(palette: torch.Tensor, comment: str = "") -> str:
    """The text of a palette file (what :func:`parse_palette` reads back)."""
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + "".join(", ".join(f"{float(v):.5f}" for v in row) + "\n" for row in palette.tolist())


def save_palette(palette: torch.Tensor, path: str | Path, comment: str = "") -> Path:
    path = Path(path)
    path.write_text(format_palette(load_palette(palette), comment))
    return path


def palette_from_chart(image: torch.Tensor, rows: int, cols: int, inner: float = 0.5) -> torch.Tensor:
    """The colours of a photographed chart of ``rows`` x ``cols`` swatches, row by row, (rows*cols, 3).

    ``image`` (3, H, W) in [0, 1] is cropped to the swatch grid. Each colour is the per-channel median
    of the central ``inner`` fraction (per side) of its cell, which keeps away from the cell borders,
    gaps between swatches and a slightly misaligned crop, and ignores specks and glare."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise InputError(f"a colour chart is an RGB image (3, H, W), got shape {tuple(image.shape)}")
    if rows < 1 or cols < 1:
        raise ConfigError(f"the chart grid needs at least one row and one column, got {rows}x{cols}")
    if not 0 < inner <= 1:
        raise ConfigError(f"inner is the sampled fraction of each cell, in (0, 1]; got {inner}")
    _, h, w = image.shape
    if h < 2 * rows or w < 2 * cols:
        raise InputError(f"a {w}x{h} image is too small for a {rows}x{cols} chart")
    out = []
    for r, c in itertools.product(range(rows), range(cols)):
        cy, cx = (r + 0.5) * h / rows, (c + 0.5) * w / cols
        hy, hx = max(0.5, inner * h / rows / 2), max(0.5, inner * w / cols / 2)
        y0, y1 = int(round(cy - hy)), max(int(round(cy + hy)), int(round(cy - hy)) + 1)
        x0, x1 = int(round(cx - hx)), max(int(round(cx + hx)), int(round(cx - hx)) + 1)
        out.append(image[:, y0:y1, x0:x1].flatten(1).median(1).values)
    return torch.stack(out).float()
