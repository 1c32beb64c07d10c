"""Bulk data in and out of a running server: file imports (``rtim import``)."""
