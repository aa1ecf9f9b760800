# -*- test-case-name: tests.test_cli -*-
"""
C{python -m mission_control.cli}: the C{mission-control} console script, run as a module.
"""

from __future__ import annotations

from mission_control.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
