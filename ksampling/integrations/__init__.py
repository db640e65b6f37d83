"""Bridges to other libraries (optional extras, imported lazily)."""
