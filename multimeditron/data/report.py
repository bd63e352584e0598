"""Bad-sample bookkeeping: the reasons a row can be refused, the error that names it, and the run's report.

Every refused row is counted by reason (never dropped silently); `summary()` is printed at the end of a run.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from multimeditron.errors import UserError

# Stable reason keys (they appear in logs, reports and `check-dataset` output).
BAD_SCHEMA = "bad_schema"
UNKNOWN_ROLE = "unknown_role"
MISPLACED_SYSTEM = "misplaced_system_turn"
EMPTY_ASSISTANT = "empty_assistant_turn"
EMPTY_USER = "empty_user_turn"
NO_ASSISTANT = "no_assistant_turn"
PLACEHOLDER_MISMATCH = "placeholder_count_mismatch"
PLACEHOLDER_IN_ANSWER = "placeholder_in_assistant_turn"
UNSUPPORTED_MODALITY = "unsupported_modality"
MISSING_IMAGE = "missing_image"
PATH_ESCAPE = "image_path_outside_base_dir"
CORRUPT_IMAGE = "corrupt_image"
UNSUPPORTED_IMAGE = "unsupported_image"
IMAGE_TOO_LARGE = "image_too_large"
TOO_LONG = "too_long"
TEMPLATE_ERROR = "chat_template_error"

# Kept rows that were changed (counted apart: they still train).
TRUNCATED = "truncated_tail_turns"
THIN_IMAGE = "image_thinner_than_a_patch"  # so elongated that on the canvas its short side is under one patch

EXAMPLES_PER_REASON = 10  # rows remembered per reason, enough to go and look without keeping millions


class BadSample(UserError):
    """One row is unusable; raised by the checks and caught where rows are counted. One that no policy catches
    (a corrupt image in a probe folder, say) reaches the CLI as a user error: one `error:` line naming the file."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DataError(UserError, ValueError):
    """A bad row under `on_bad_sample: error` (or unusable data as a whole), naming dataset, row and reason."""

    def __init__(self, message: str, dataset: str | None = None, row: int | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.dataset, self.row, self.reason = dataset, row, reason

    @classmethod
    def for_row(cls, dataset: str, row: int, reason: str, detail: str = "", more: str = "") -> DataError:
        text = f"dataset {dataset!r}, row {row}: {reason}" + (f": {detail}" if detail else "") + more
        return cls(text, dataset=dataset, row=row, reason=reason)


@dataclass
class BadSampleReport:
    """Refused rows counted by reason (`counts`), plus kept-but-changed rows (`modified`, e.g. truncated)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    modified: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, dataset: str, row: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        rows = self.examples.setdefault(reason, [])
        if len(rows) < EXAMPLES_PER_REASON:
            rows.append((dataset, int(row)))

    def note(self, reason: str, count: int = 1) -> None:
        """Count kept rows that were changed (they are not part of `total`)."""
        if count:
            self.modified[reason] = self.modified.get(reason, 0) + count

    def merge(self, other: BadSampleReport | Iterable[tuple[str, str, int]] | None) -> BadSampleReport:
        """Add another report, or (reason, dataset, row) tuples (the rows the workers skipped, `SkipLog`)."""
        if other is None:
            return self
        if not isinstance(other, BadSampleReport):
            for reason, dataset, row in other:
                self.add(reason, dataset, row)
            return self
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
            rows = self.examples.setdefault(reason, [])
            rows.extend(other.examples.get(reason, [])[:max(0, EXAMPLES_PER_REASON - len(rows))])
        for reason, count in other.modified.items():
            self.note(reason, count)
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:  # an empty report is falsy, so `if report:` reads naturally
        return bool(self.counts or self.modified)

    def summary(self) -> str:
        lines = [f"bad samples skipped: {self.total}"]
        for reason, count in sorted(self.counts.items(), key=lambda item: (-item[1], item[0])):
            where = ", ".join(f"{name}#{row}" for name, row in self.examples.get(reason, [])[:3])
            lines.append(f"  {reason}: {count}" + (f" (e.g. {where})" if where else ""))
        for reason, count in sorted(self.modified.items()):
            lines.append(f"kept but changed, {reason}: {count}")
        return "\n".join(lines)
