"""Serving. Filled by the serving issue (#8)."""
