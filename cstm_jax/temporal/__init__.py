"""Temporal ops (pure functions) and the temporal modules built on them."""
