"""Export a run's optimized artefacts to the physical world: PNGs at physical size and a print sheet.

``export_run(run_dir)`` (``robustkit export RUN_DIR``) reads what every attack of a run stored (the
patch, the eyeglass frame's texture, the sticker, a rectangle, a framing border, a flicker's colour
sequence) and writes, under ``RUN_DIR/export`` (or another folder inside the run directory):

- one PNG per artefact, RGBA (transparent outside the artefact's mask, so it can be cut out), cropped to
  the artefact, with its physical size in the metadata (``dpi``): ``size_cm`` (the printed width) or
  ``dpi`` decide it, defaulting to a typical size per kind (an eyeglass frame 14 cm wide, others 10 cm);
  a flicker becomes a strip of its colours, one swatch per frame, and a CSV of the per-frame offsets;
- ``print_sheet.pdf``: one page per artefact at true size (A4, or larger when the artefact needs it),
  with a scale bar in centimetres to check the printer did not rescale, and the run's printable palette
  as swatches.

``chart_palette(image, rows, cols)`` (``robustkit palette CHART.png --grid RxC``) turns a photo of a
printed colour chart into a palette file that every physical attack takes as ``palette``.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, InputError
from ..evaluation.store import STORE_FILE, Store
from ..functional.palette import load_palette, palette_from_chart, save_palette

log = logging.getLogger(__name__)

CM_PER_INCH = 2.54
A4_INCHES = (8.27, 11.69)
MARGIN_IN = 0.6
# The printed width of each kind of artefact when neither size_cm nor dpi is given.
DEFAULT_WIDTH_CM = {"eyeglass": 14.0, "flicker": 12.0}
DEFAULT_CM = 10.0
# Artefact keys: (the texture, the key of its mask (None: its non-zero pixels), kind).
TEXTURES = (
    ("patch", "patch_mask", "patch"),
    ("texture", "mask", "eyeglass"),
    ("sticker", "mask", "sticker"),
    ("occlusion", None, "occlusion"),
    ("frame", None, "framing"),
    ("framing", None, "framing"),
)
FLICKERS = ("universal_flicker", "flicker", "flicker_offsets")  # a universal one first


@dataclass
class Artefact:
    """One exported artefact: RGBA pixels (4, H, W) in [0, 1], its printed width and resolution."""

    attack: str
    kind: str
    rgba: torch.Tensor
    width_cm: float
    sequence: list[list[float]] | None = None  # a flicker's per-frame RGB offsets

    @property
    def dpi(self) -> float:
        return self.rgba.shape[-1] / (self.width_cm / CM_PER_INCH)

    @property
    def height_cm(self) -> float:
        return self.width_cm * self.rgba.shape[-2] / self.rgba.shape[-1]


@dataclass
class Export:
    """What :func:`export_run` wrote."""

    out: Path
    pngs: list[Path] = field(default_factory=list)
    pdf: Path | None = None
    artefacts: list[Artefact] = field(default_factory=list)


def inside(run_dir: Path, out: str | Path | None, default: str = "export") -> Path:
    """``out`` resolved; a ConfigError unless it lies inside ``run_dir`` (relative paths are taken
    relative to it)."""
    root = run_dir.resolve()
    target = (root / default) if out is None else Path(out).expanduser()
    target = (target if target.is_absolute() else root / target).resolve()
    if target != root and root not in target.parents:
        raise ConfigError(
            f"export writes inside the run directory only; {out} resolves to {target}, outside {root}"
        )
    return target


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "attack"


def _crop(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """RGBA (4, h, w) cropped to the pixels where ``alpha`` > 0 (the whole image when none)."""
    rgba = torch.cat([rgb.clamp(0, 1), alpha.clamp(0, 1)])
    on = alpha[0] > 0
    if not on.any():
        return rgba
    rows, cols = on.any(1).nonzero()[:, 0], on.any(0).nonzero()[:, 0]
    return rgba[:, int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1]


def _texture(value: torch.Tensor) -> torch.Tensor | None:
    """A colour image (3, H, W) from a stored tensor: (3, H, W), a batch's first (1 or B, 3, H, W), or
    a clip's first frame (3, T, H, W)."""
    t = value.detach().float().cpu()
    if t.ndim == 4 and t.shape[1] == 3:
        t = t[0]
    elif t.ndim == 4 and t.shape[0] == 3:
        t = t[:, 0]
    return t if t.ndim == 3 and t.shape[0] == 3 else None


def _sequence(value: Any) -> list[list[float]] | None:
    """A flicker's per-frame RGB offsets [[r, g, b], ...] from a stored tensor or JSON list (the first
    sample of a batch; (T, 3) or (3, T))."""
    t = torch.as_tensor(value, dtype=torch.float32)
    while t.ndim > 2:
        t = t[0]
    if t.ndim != 2 or 3 not in t.shape:
        return None
    return (t if t.shape[1] == 3 else t.T).tolist()


def collect(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The artifacts of the first batch of every attack of a run: ``{attack name: {key: value}}``."""
    run_dir = Path(run_dir)
    if not (run_dir / STORE_FILE).is_file():
        raise InputError(f"{run_dir} is not a robustkit run directory ({STORE_FILE} expected)")
    store = Store(run_dir / STORE_FILE)
    try:
        out: dict[str, dict[str, Any]] = {}
        for a in store.attacks():
            found: dict[str, Any] = {}
            for record in store.artifacts(a["id"], tensor_batches=1):
                if record.key not in found and record.part == 0:
                    found[record.key] = record.value()
            out[a["name"]] = found
        return out
    finally:
        store.close()


def artefacts_of(
    name: str, found: dict[str, Any], *, size_cm: float | None, dpi: float | None
) -> list[Artefact]:
    """The printable artefacts among one attack's artifacts."""
    out = []

    def width(kind: str, pixels: int) -> float:
        if size_cm is not None:
            return size_cm
        if dpi is not None:
            return pixels / dpi * CM_PER_INCH
        return DEFAULT_WIDTH_CM.get(kind, DEFAULT_CM)

    for key, mask_key, kind in TEXTURES:
        if not isinstance(found.get(key), torch.Tensor):
            continue
        rgb = _texture(found[key])
        if rgb is None:
            continue
        mask = found.get(mask_key) if mask_key else None
        if isinstance(mask, torch.Tensor):
            alpha = mask.detach().float().cpu().reshape(-1, *mask.shape[-2:])[:1]
        else:
            alpha = (rgb.abs().sum(0, keepdim=True) > 0).float()
        if alpha.shape[-2:] != rgb.shape[-2:]:
            alpha = torch.ones_like(rgb[:1])
        rgba = _crop(rgb, alpha)
        out.append(Artefact(name, kind, rgba, width(kind, rgba.shape[-1])))
        break  # one artefact per attack: the first kind found (a sticker run also stores its mask)
    for key in FLICKERS:
        if key in found:
            seq = _sequence(found[key])
            if seq:
                strip = (0.5 + torch.tensor(seq)).clamp(0, 1).T[:, None, :]  # (3, 1, T): mid-gray + offset
                rgba = torch.cat([strip, torch.ones_like(strip[:1])])
                out.append(Artefact(name, "flicker", rgba, width("flicker", rgba.shape[-1]), sequence=seq))
                break
    return out


def write_png(art: Artefact, path: Path) -> Path:
    from PIL import Image

    pixels = (art.rgba.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels, mode="RGBA").save(path, dpi=(art.dpi, art.dpi))
    return path


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    dpi: float | None = None,
    size_cm: float | None = None,
    sheet: bool = True,
) -> Export:
    """Write every optimized artefact of a run as a PNG at physical size, and a print sheet PDF (see
    the module docstring). ``size_cm``: the printed width of every artefact; ``dpi``: its resolution
    instead (one pixel = 1/dpi inch). ``out`` must lie inside ``run_dir``."""
    run_dir = Path(run_dir)
    if dpi is not None and size_cm is not None:
        raise ConfigError("give the printed size either as dpi or as size_cm, not both")
    for what, v in (("dpi", dpi), ("size_cm", size_cm)):
        if v is not None and not v > 0:
            raise ConfigError(f"{what} must be > 0, got {v}")
    target = inside(run_dir, out)
    found = collect(run_dir)
    result = Export(out=target)
    palette = None
    for name, arts in found.items():
        result.artefacts += artefacts_of(name, arts, size_cm=size_cm, dpi=dpi)
        if palette is None and isinstance(arts.get("palette"), torch.Tensor):
            palette = load_palette(arts["palette"])
    if not result.artefacts:
        raise InputError(
            f"{run_dir} holds no optimized artefact to export (a patch, eyeglass frame, sticker, framing "
            "or flicker attack stores one)"
        )
    target.mkdir(parents=True, exist_ok=True)
    for art in result.artefacts:
        stem = f"{_safe(art.attack)}-{art.kind}"
        result.pngs.append(write_png(art, target / f"{stem}.png"))
        if art.sequence is not None:
            with open(target / f"{stem}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["frame", "r_offset", "g_offset", "b_offset"])
                w.writerows([i, *(round(v, 6) for v in rgb)] for i, rgb in enumerate(art.sequence))
    if palette is not None:
        save_palette(palette, target / "palette.txt", "the printable palette the run optimized for")
    if sheet:
        result.pdf = print_sheet(result.artefacts, target / "print_sheet.pdf", palette)
    (target / "export.json").write_text(json.dumps([
        {"attack": a.attack, "kind": a.kind, "png": p.name, "width_cm": round(a.width_cm, 4),
         "height_cm": round(a.height_cm, 4), "dpi": round(a.dpi, 3), "pixels": list(a.rgba.shape[-2:])}
        for a, p in zip(result.artefacts, result.pngs, strict=True)
    ], indent=2))  # fmt: skip
    log.info("exported %d artefacts of %s to %s", len(result.artefacts), run_dir, target)
    return result


def page_inches(art: Artefact, palette_rows: int) -> tuple[float, float]:
    """The page for one artefact: A4 portrait, or larger when the artefact and its scale bar and
    swatches do not fit inside the margins."""
    w_in, h_in = art.width_cm / CM_PER_INCH, art.height_cm / CM_PER_INCH
    need_w = w_in + 2 * MARGIN_IN
    need_h = h_in + 2 * MARGIN_IN + 1.6 + 0.5 * palette_rows
    return max(A4_INCHES[0], need_w), max(A4_INCHES[1], need_h)


def print_sheet(artefacts: list[Artefact], path: Path, palette: torch.Tensor | None = None) -> Path:
    """A PDF with one page per artefact at true size, a centimetre scale bar and the palette."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    per_row = 12
    pal = [] if palette is None else palette.tolist()
    pal_rows = (len(pal) + per_row - 1) // per_row
    with PdfPages(path) as pdf:
        for art in artefacts:
            pw, ph = page_inches(art, pal_rows)
            fig = Figure(figsize=(pw, ph))
            w_in, h_in = art.width_cm / CM_PER_INCH, art.height_cm / CM_PER_INCH
            top = ph - MARGIN_IN
            fig.text(MARGIN_IN / pw, (top - 0.1) / ph, f"{art.attack} ({art.kind})", fontsize=12, va="top")
            fig.text(MARGIN_IN / pw, (top - 0.35) / ph, f"{art.width_cm:.2f} x {art.height_cm:.2f} cm at "
                     f"{art.dpi:.1f} dpi; print at 100% (no fit-to-page)", fontsize=8, va="top")  # fmt: skip
            y0 = top - 0.6 - h_in
            ax = fig.add_axes((MARGIN_IN / pw, y0 / ph, w_in / pw, h_in / ph))
            ax.imshow(art.rgba.permute(1, 2, 0).numpy(), interpolation="nearest", extent=(0, w_in, 0, h_in))
            ax.set_axis_off()
            bar_cm = max(1, min(10, int((pw - 2 * MARGIN_IN) * CM_PER_INCH)))
            bar_in = bar_cm / CM_PER_INCH
            by = y0 - 0.5
            bar = fig.add_axes((MARGIN_IN / pw, by / ph, bar_in / pw, 0.12 / ph))
            bar.set_xlim(0, bar_cm)
            bar.set_ylim(0, 1)
            for i in range(bar_cm):
                bar.add_patch(
                    Rectangle((i, 0), 1, 1, color="black" if i % 2 == 0 else "white", ec="black", lw=0.5)
                )
            bar.set_axis_off()
            fig.text(MARGIN_IN / pw, (by - 0.08) / ph, f"scale bar: {bar_cm} cm", fontsize=7, va="top")
            if pal:
                sw = 0.5  # inches per swatch
                for k, rgb in enumerate(pal):
                    r, c = divmod(k, per_row)
                    sy = by - 0.5 - (r + 1) * sw
                    s = fig.add_axes(((MARGIN_IN + c * sw) / pw, sy / ph, 0.9 * sw / pw, 0.9 * sw / ph))
                    s.add_patch(Rectangle((0, 0), 1, 1, color=[min(max(v, 0.0), 1.0) for v in rgb]))
                    s.set_axis_off()
                fig.text(MARGIN_IN / pw, (by - 0.3) / ph, "printable palette (photograph these to check the print)",
                         fontsize=7, va="top")  # fmt: skip
            pdf.savefig(fig)
    return path


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as an RGB tensor (3, H, W) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read the image {path}: {exc}") from exc
    import numpy as np

    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 255


def parse_grid(text: str) -> tuple[int, int]:
    """``'RxC'`` -> (rows, cols)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ConfigError(f"--grid is ROWSxCOLS, e.g. 5x6, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def chart_palette(
    image: str | Path, grid: str | tuple[int, int], out: str | Path, inner: float = 0.5
) -> torch.Tensor:
    """Read a photo of a printed colour chart (cropped to its swatch grid), sample the centre of every
    cell and write the palette file ``out``; returns the palette (rows*cols, 3)."""
    rows, cols = parse_grid(grid) if isinstance(grid, str) else grid
    pal = palette_from_chart(read_image(image), rows, cols, inner)
    save_palette(pal, out, f"measured from {Path(image).name}, {rows}x{cols} swatches, row by row")
    return pal
