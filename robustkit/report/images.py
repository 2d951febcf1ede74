"""Images and charts as inline data: PNG thumbnails (base64) and SVG charts (matplotlib)."""

from __future__ import annotations

import base64
import io

import torch
from PIL import Image


def png_data_uri(img: torch.Tensor, size: int = 96) -> str:
    """(C, H, W) uint8 or float in [0, 1] -> 'data:image/png;base64,...', at most ``size`` pixels wide."""
    if img.is_floating_point():
        img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    arr = img.permute(1, 2, 0).cpu().numpy()
    pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    if max(pil.size) > size:  # small images stay native; the page scales them with crisp pixels
        pil.thumbnail((size, size))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def amplified(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """The perturbation scaled to fill [0, 1] around mid-grey."""
    d = adv.float() - clean.float()
    m = d.abs().max()
    return (0.5 + 0.5 * d / m).clamp(0, 1) if m > 0 else torch.full_like(d, 0.5)


def line_chart_svg(
    series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, xscale: float = 1.0
) -> str:
    """A small line chart as an inline SVG string."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=100)
    for label, pts in series.items():
        xs = [p[0] * xscale for p in pts]
        ys = [p[1] for p in pts]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]
