"""Repository tools run by make targets (not installed with patrol)."""
