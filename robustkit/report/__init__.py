"""Self-contained HTML reports rendered from stored results only."""

from .layout import register_section
from .render import render_report

__all__ = ["register_section", "render_report"]
