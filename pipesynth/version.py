"""The package's version, in a module of its own so that every layer can stamp files with it (the core
writes it into provenance) without importing the package root, which imports the layers."""

__version__ = "0.1.0"
