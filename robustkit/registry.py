"""One small generic registry: ``register(name)``, ``create(name, **cfg)``, ``names(pattern)``.

Recipes and the CLI name components by key; the registry turns keys into objects and turns
typos into "did you mean" errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def suggest(word: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(given: dict[str, Any], allowed: list[str] | tuple[str, ...] | set[str], where: str) -> None:
    """Raise ConfigError naming the first unknown key in ``given`` with a suggestion."""
    for key in given:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key '{key}'{suggest(key, allowed)}. Allowed keys: {', '.join(sorted(allowed))}."
            )


def dataclass_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


# Entries that a higher layer registers, loaded on the first lookup: ``robustkit/__init__`` names the
# modules that register the built-in datasets, the zoo's model source and the ART adapter, and a lookup
# here (or in ``models.loading``) imports them then. The names are data handed down, so a lower layer
# never imports a higher one, and ``import robustkit`` stays light (no torch).
_PROVIDERS: dict[str, list[str]] = {}
_PROVIDED: set[tuple[str, str]] = set()


def provide(group: str, spec: str) -> None:
    """Have the first ``load_providers(group)`` import ``spec``: ``package.module``, or
    ``package.module:function`` (imported, then called without arguments). Once per (group, spec)."""
    if (group, spec) not in _PROVIDED and spec not in _PROVIDERS.setdefault(group, []):
        _PROVIDERS[group].append(spec)


def load_providers(group: str) -> None:
    """Import (and call) every provider of ``group`` not loaded yet; a failed one stays pending."""
    pending = _PROVIDERS.get(group)
    while pending:
        spec = pending.pop(0)
        _PROVIDED.add((group, spec))
        module_name, _, function = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
            if function:
                getattr(module, function)()
        except BaseException:
            _PROVIDED.discard((group, spec))
            pending.insert(0, spec)
            raise


class Registry(Generic[T]):
    """Maps names to factories (classes or functions)."""

    def __init__(self, kind: str, autoload: tuple[str, ...] = ()) -> None:
        """``autoload``: packages of this layer whose modules register entries; entries registered by
        higher layers come from the providers of the group ``kind`` (see ``provide``)."""
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}
        self._autoload = autoload
        self._loaded = not autoload

    def load_all(self) -> None:
        """Import every module of the ``autoload`` packages and every provider of this kind, so that
        every entry has registered itself."""
        load_providers(self.kind)
        if self._loaded:
            return
        self._loaded = True
        for package in self._autoload:
            pkg = importlib.import_module(package)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{package}.{info.name}")

    def register(self, name: str, *aliases: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            for key in (name, *aliases):
                if key in self._items and self._items[key] is not factory:
                    raise KeyError(f"{self.kind} '{key}' is registered twice")
                self._items[key] = factory
            return factory

        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            self.load_all()
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise ConfigError(
                f"unknown {self.kind} '{name}'{suggest(name, list(self._items))}. Known: {known}."
            )
        return self._items[name]

    def create(self, name: str, **cfg: Any) -> T:
        factory = self.get(name)
        if dataclasses.is_dataclass(factory):
            check_keys(cfg, dataclass_fields(factory), f"{self.kind} '{name}'")
        try:
            return factory(**cfg)
        except TypeError as exc:  # a wrong keyword in a plain function factory
            raise ConfigError(f"{self.kind} '{name}': {exc}") from exc

    def names(self, pattern: str = "*") -> list[str]:
        self.load_all()
        return sorted(k for k in self._items if fnmatch.fnmatch(k, pattern))

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self.load_all()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
