"""The stop under `on_bad_sample: skip`: a dataset whose refused rows exceed `data.max_bad_sample_share` stops the
run, naming the dominant reason, so that a systematic problem (a wrong placeholder) cannot quietly empty it."""
from __future__ import annotations

from collections import Counter

from multimeditron.data.report import PLACEHOLDER_MISMATCH, DataError

# What to do about the usual systematic causes.
HINTS = {PLACEHOLDER_MISMATCH: "the data's image placeholder is probably not {token!r}: set data.attachment_token "
                               "(auto detects <|image|>, <|reserved_special_token_0|> and <image>)"}


def check_refused_share(reasons: list[str], total: int, max_share: float, dataset: str, token: str) -> None:
    """Raise a DataError when `len(reasons) / total > max_share`; `reasons`: one per refused row."""
    if not reasons or total <= 0 or len(reasons) / total <= max_share:
        return
    (dominant, count), = Counter(reasons).most_common(1)
    hint = HINTS.get(dominant, "run `multimeditron check-dataset` on it to list the rows").format(token=token)
    raise DataError(f"dataset {dataset!r}: {len(reasons)} of {total} rows ({100 * len(reasons) / total:.1f}%) were "
                    f"refused, above data.max_bad_sample_share = {100 * max_share:g}%; mostly {dominant} "
                    f"({count} rows): {hint}", dataset=dataset, reason=dominant)
