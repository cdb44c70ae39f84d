"""The skip-and-name policy of a prediction run: a source that cannot be predicted (missing,
empty, not an image, truncated, an unreadable video, a folder or glob with nothing in it, an
image too thin to resize) is named with its reason and skipped, and the run goes on; with
`strict` it stops the run instead. The exit code says which happened."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from detector.errors import DataError, DegenerateImageError, SourceError

# What makes one source skippable: unreadable (DataError from the reader, SourceError for a
# video), or too thin for the model's resize. Anything else stops the run.
SKIPPABLE_ERRORS = (SourceError, DataError, DegenerateImageError)


@dataclass(frozen=True)
class Skipped:
    """A source left out of a prediction run, and why."""

    source: str
    reason: str

    @classmethod
    def because(cls, path: Path, error: Exception) -> "Skipped":
        """The skip of `path` for `error`, whose message names the file already."""
        return cls(str(path), str(error).removeprefix(f"{path}: "))

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class PredictionRun:
    """What a run did: the sources predicted and the ones skipped."""

    predicted: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return exit_code(len(self.predicted), len(self.skipped))


def exit_code(predicted: int, skipped: int) -> int:
    """0: every source predicted; 1: some skipped; 2: none predicted."""
    if not predicted:
        return 2
    return 1 if skipped else 0
