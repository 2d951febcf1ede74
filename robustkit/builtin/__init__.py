"""The built-in datasets, each with its zoo model: ``shapes``, ``faces``, ``signs``, ``shapes-video``.

Importing this package registers them all: ``robustkit/__init__`` names it as the provider of built-in
datasets and model sources, so the first lookup of either imports it. ``zoo`` holds the registry of zoo
models, ``load_zoo_model`` and the shared small-ResNet entry.
"""

from __future__ import annotations

from . import faces, mixture, shapes, shapes_video, signs, zoo

__all__ = ["faces", "mixture", "shapes", "shapes_video", "signs", "zoo"]
