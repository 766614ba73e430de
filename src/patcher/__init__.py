"""Patcher: locate the trigger of a backdoored language model from one failure case, and patch it out."""

__version__ = "0.1.0"
