"""Config keys shared by every d2align project."""
from .defaults import add_d2align_config

__all__ = ["add_d2align_config"]
