"""The page layout: an ordered registry of report sections.

A section is one record (:class:`Section`): the template that renders it, the navigation entries of
the ``<section>`` elements it renders (anchor key and title, in page order) and its view functions,
keyed by the names its template reads (``run.<name>``), each a pure function of the loaded
:class:`~.load.Run`. The navigation (``SECTIONS``), each run's view (``render.run_view``) and the order
of the run's parts in ``_run.html.j2`` all follow the registry, so adding a section is one call of
:func:`register_section`. A section from outside the package brings its own template with ``source``
(its text, or the path of a file holding it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import BaseLoader, ChoiceLoader, Environment, PackageLoader, TemplateNotFound

from ..errors import ConfigError
from . import sections
from .curves import eot_curves, eps_curves
from .gallery import artifact_gallery, image_gallery, video_gallery
from .load import Run

View = Callable[[Run], Any]
# What every run's view holds besides the sections' views (render.run_view).
RESERVED = ("anchor", "header")
_ANCHOR = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_VIEW = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Section:
    """One part of a run's page: ``template`` renders the ``<section>`` elements whose anchor keys and
    titles ``anchors`` lists (each ``<section id="{{ a }}-KEY" data-section="KEY">``, ``a`` being the
    run's anchor); ``views`` maps each name the template reads as ``run.<name>`` to its function."""

    name: str
    template: str
    anchors: tuple[tuple[str, str], ...]
    views: Mapping[str, View]


class _Registered(BaseLoader):
    """Templates registered with a section (``source``): their text, or a file read when loaded."""

    def __init__(self) -> None:
        self.sources: dict[str, str | Path] = {}

    def get_source(self, environment: Environment, template: str) -> tuple[str, str | None, Callable]:
        if template not in self.sources:
            raise TemplateNotFound(template)
        source = self.sources[template]
        if isinstance(source, Path):
            mtime = source.stat().st_mtime
            return source.read_text(), str(source), lambda: self._current(template, source, mtime)
        return source, None, lambda: self.sources.get(template) is source

    def _current(self, template: str, path: Path, mtime: float) -> bool:
        return self.sources.get(template) == path and path.is_file() and path.stat().st_mtime == mtime


_PACKAGE = PackageLoader("robustkit.report", "templates")
_REGISTERED = _Registered()
# The built-in templates come first: a registered template cannot replace one of them.
LOADER = ChoiceLoader([_PACKAGE, _REGISTERED])
_SECTIONS: list[Section] = []


def registered() -> tuple[Section, ...]:
    """The sections in page order."""
    return tuple(_SECTIONS)


def navigation() -> tuple[tuple[str, str], ...]:
    """(anchor key, title) of every section element in page order: the navigation bar's entries."""
    return tuple(pair for section in _SECTIONS for pair in section.anchors)


class Navigation(Sequence):
    """``SECTIONS``: a live, read-only view of :func:`navigation` (sections registered later included)."""

    def __getitem__(self, i):
        return navigation()[i]

    def __len__(self) -> int:
        return len(navigation())

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(navigation())

    def __repr__(self) -> str:
        return f"SECTIONS{navigation()!r}"


SECTIONS = Navigation()


def _position(before: str | None, after: str | None) -> int:
    names = [s.name for s in _SECTIONS]
    if before is not None and after is not None:
        raise ConfigError("register_section: give before= or after=, not both")
    for where in (before, after):
        if where is not None and where not in names:
            raise ConfigError(
                f"register_section: no section '{where}' to place it by. Sections: {', '.join(names)}"
            )
    if before is not None:
        return names.index(before)
    return names.index(after) + 1 if after is not None else len(names)


def _check(name: str, template: str, anchors: tuple, views: Mapping, source: Any) -> None:
    where = f"report section '{name}'"
    if any(s.name == name for s in _SECTIONS):
        raise ConfigError(f"{where} is registered already; choose another name")
    if not anchors:
        raise ConfigError(f"{where}: give at least one (anchor key, title) pair for the navigation")
    taken = {key for key, _ in navigation()} | {"header"}
    for key, title in anchors:
        if not isinstance(key, str) or not _ANCHOR.match(key):
            raise ConfigError(f"{where}: anchor key {key!r} must be lower-case letters, digits and '-'")
        if key in taken:
            raise ConfigError(f"{where}: anchor key '{key}' is used by another section")
        if not isinstance(title, str) or not title:
            raise ConfigError(f"{where}: anchor '{key}' needs a title for the navigation")
        taken.add(key)
    used = set(RESERVED) | {v for s in _SECTIONS for v in s.views}
    for key, fn in views.items():
        if not isinstance(key, str) or not _VIEW.match(key) or key in used:
            raise ConfigError(
                f"{where}: view name {key!r} must be an identifier the template reads as run.{key}, not "
                f"one of {', '.join(sorted(used))}"
            )
        if not callable(fn):
            raise ConfigError(f"{where}: view '{key}' must be a function of the loaded Run")
    builtin = set(_PACKAGE.list_templates())
    if source is None and template not in builtin and template not in _REGISTERED.sources:
        raise ConfigError(
            f"{where}: no template '{template}' in robustkit/report/templates; pass its text or file as source="
        )
    if source is not None and (template in builtin or template in _REGISTERED.sources):
        raise ConfigError(f"{where}: a template named '{template}' exists already; name yours differently")
    if source is not None and not isinstance(source, str | Path):
        raise ConfigError(f"{where}: source must be the template's text or a Path to its file")


def register_section(
    name: str,
    *,
    template: str,
    anchors: Sequence[tuple[str, str]],
    views: Mapping[str, View],
    source: str | Path | None = None,
    before: str | None = None,
    after: str | None = None,
) -> Section:
    """Add a section to every report, at the end of the page or ``before``/``after`` a named section.

    ``template``: its template's name, in ``robustkit/report/templates`` unless ``source`` gives the
    template's text (or a ``Path`` to its file). ``anchors``: (key, title) of each ``<section>`` it
    renders, keys unique on the page. ``views``: name -> function of the :class:`~.load.Run`, returning
    plain data the template reads as ``run.<name>`` (names unique across sections). The page is
    autoescaped and its Content-Security-Policy forbids scripts and fetches: a section shows data,
    inline SVG and ``data:`` images only.
    """
    anchors = tuple((key, title) for key, title in anchors)
    _check(name, template, anchors, views, source)
    index = _position(before, after)
    if source is not None:
        _REGISTERED.sources[template] = source
    section = Section(name=name, template=template, anchors=anchors, views=dict(views))
    _SECTIONS.insert(index, section)
    return section


# The built-in sections in page order: (name, anchors, views); each renders templates/_<name>.html.j2.
BUILTIN = (
    ("summary", (("summary", "Summary"),), {"summary": sections.summary}),
    ("views", (("views", "Views"),), {"views": sections.views}),
    ("attacks", (("attacks", "Attacks"),), {"cascade": sections.cascade, "metrics": sections.attack_metrics}),
    (
        "curves",
        (("curves", "Accuracy vs ε"), ("eot", "EOT curves")),
        {"curves": eps_curves, "eot": eot_curves},
    ),
    ("classes", (("classes", "Per class"),), {"classes": sections.per_class}),
    (
        "gallery",
        (("gallery", "Gallery"), ("artifacts", "Patches & textures")),
        {"images": image_gallery, "videos": video_gallery, "artifacts": artifact_gallery},
    ),
    ("findings", (("findings", "Sanity findings"),), {"findings": sections.findings}),
    ("defense", (("defense", "Defense"),), {"defense": sections.defense}),
    ("timing", (("timing", "Timing"),), {"timing": sections.timing}),
    ("provenance", (("provenance", "Provenance"),), {"provenance": sections.provenance}),
)


def _register_builtin() -> None:
    for name, anchors, views in BUILTIN:
        register_section(name, template=f"_{name}.html.j2", anchors=anchors, views=views)


_register_builtin()
