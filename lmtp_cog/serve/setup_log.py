"""What ``./serve`` shows while the model's ``setup()`` runs: the model's own lines, as they come.

Loading a large model takes minutes, and the Cog server says nothing on its HTTP port until it
is done. Its log file does: coglet 0.23 writes one JSON object per line (``{"timestamp",
"level", "fields": {"message", "source"}, "target"}``), and what ``setup()`` prints or logs comes
with ``"target": "coglet::setup"``. Those lines are shown as they appear (coglet's own bookkeeping
is not), and when nothing was shown for a while, a line says that setup still runs and where the
log is, so a long silence never looks like a hang.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

SETUP_TARGET = "coglet::setup"
"""coglet's log target for what the model prints during setup()."""

DEFAULT_QUIET_SECONDS = 10.0
"""After this long without a line from setup(), ./serve says that it still runs."""


class SetupProgress:
    """Shows the new setup lines of a Cog server's log; call it while waiting for setup()."""

    def __init__(
        self,
        log_path: Path,
        *,
        say: Callable[[str], None],
        quiet_seconds: float = DEFAULT_QUIET_SECONDS,
    ) -> None:
        self.log_path = log_path
        self._say = say
        self._quiet_seconds = quiet_seconds
        self._offset = 0
        self._partial = b""
        self._last_said = 0.0

    def __call__(self, waited: float) -> None:
        """Show what setup() printed since the last call; ``waited``: seconds since the start."""
        for line in self.new_lines():
            self._say(f"  setup: {line}")
            self._last_said = waited
        if waited - self._last_said >= self._quiet_seconds:
            self._say(f"  still setting up ({waited:.0f} s), see {self.log_path}")
            self._last_said = waited

    def flush(self) -> None:
        """Show the lines written since the last call (setup() just ended, one way or another)."""
        for line in self.new_lines():
            self._say(f"  setup: {line}")

    def new_lines(self) -> list[str]:
        """The setup lines appended to the log since the last call (whole lines only)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except OSError:
            return []  # not written yet
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        shown = (setup_line(raw.decode(errors="replace")) for raw in complete)
        return [line for line in shown if line]


def setup_line(raw: str) -> str | None:
    """What to show of one line of the Cog server's log, or ``None`` for coglet's own lines.

    A line that is not coglet's JSON (a Python error printed before coglet took over) is shown
    as it is.
    """
    raw = raw.rstrip("\r")
    try:
        record = json.loads(raw)
    except ValueError:
        return raw.strip() or None
    if not isinstance(record, dict):
        return raw.strip() or None
    fields = record.get("fields")
    if record.get("target") != SETUP_TARGET or not isinstance(fields, dict):
        return None
    message = str(fields.get("message", "")).rstrip()
    return message or None
