"""Provides the natbox engine: forwards, plans, rulesets, backends. No UI imports here."""

__version__ = "0.1.0"
