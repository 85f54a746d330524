"""The package version (its own module, so that no module imports the package ``__init__``)."""

__version__ = "0.1.0.dev0"
