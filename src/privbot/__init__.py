"""privbot: privacy-request intake assistant."""

__version__ = "0.1.0"
