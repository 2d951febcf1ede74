"""Several defenses in one run: the ``--defense a,b,c`` list.

How each defense's declared capabilities are honored (EOT, BPDA, batch composition) is
``robustkit.defenses.adaptive.honor``; the side-by-side run is ``robustkit.api.evaluate_defenses``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError


def split_defenses(spec: str | list[Any] | tuple[Any, ...]) -> list[Any]:
    """'a,b' -> ['a', 'b']; a list may also hold Defense objects or models."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip() if isinstance(s, str) else s for s in items if not isinstance(s, str) or s.strip()]
    if not names:
        raise ConfigError("--defense needs at least one defense name (comma-separated)")
    return names
