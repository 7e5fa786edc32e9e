"""syncd: keeps a local contact mirror and provider contact lists in agreement, both ways."""

__version__ = "0.1.0"
