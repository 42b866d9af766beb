"""Provides `python -m natbox`."""

from natbox.cli import main

raise SystemExit(main())
