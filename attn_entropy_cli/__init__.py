"""attnent: attention entropy for transformer training runs."""

__version__ = "0.1.0"
