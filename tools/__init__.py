"""Tool implementations: plain typed functions (their signature and docstring become the JSON schema)."""
from .calculator import calc

__all__ = ["calc"]
