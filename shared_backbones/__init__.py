"""convsuite shared efficient-backbone core (domain-free)."""

__version__ = "0.1.0"
