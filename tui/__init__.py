"""Provides natbox's Textual dashboard (wiring only; the engine lives in natbox/)."""
