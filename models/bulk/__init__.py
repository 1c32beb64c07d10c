"""Bulk data: how rows of warehouse files become API events (pure, no I/O)."""
