"""Snapshots: read-only views of prefixes at a past state (``db0.snapshot``)."""

from __future__ import annotations

import contextvars
from typing import Any, Optional

# The snapshot of the innermost active ``with db0.snapshot(...)`` block, per context, so
# that module-level fetch/exists/find read from it (the product README relies on this).
_active_view: contextvars.ContextVar[Optional[Any]] = contextvars.ContextVar("db0_view", default=None)


def active_view() -> Optional[Any]:
    return _active_view.get()
