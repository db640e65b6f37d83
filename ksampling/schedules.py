"""Sigma schedules (being written)."""
