"""Provides reusable widgets for natbox; they may use natbox.model, never tui/."""
