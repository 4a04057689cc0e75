"""Deterministic demo database and images (stand-in for the AgIR repositories)."""

from agir.demo.generate import generate_demo_data, import_examples

__all__ = ["generate_demo_data", "import_examples"]
