"""Provides natbox's screens."""
