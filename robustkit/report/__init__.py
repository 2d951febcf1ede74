"""Self-contained HTML reports rendered from stored results only."""

from .render import render_report

__all__ = ["render_report"]
