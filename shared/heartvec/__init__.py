"""heartvec: whole-heart label volumes <-> compact neural shape codes (the shared package)."""

__version__ = "0.1.0"
