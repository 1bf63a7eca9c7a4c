"""The package's version: one place, read by the metadata of every checkpoint and by the build."""

__version__ = "0.2.0"
