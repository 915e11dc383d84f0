"""Shim for tools that still call ``setup.py``: the build is defined in pyproject.toml (PEP 621)."""
from setuptools import setup

setup()
