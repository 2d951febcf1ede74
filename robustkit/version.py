"""The package version, in the lowest layer so that every layer (the report's closing note, the CLI) can
name it without importing the package's top-level API."""

__version__ = "0.1.0"
