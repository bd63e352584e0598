"""The data path: MultiMediset loading and mixing, image decoding, chat-template labels, packing and collation.

Trainer-facing API: `build_sft_datasets(data, processor, seed) -> SFTData(train, eval, report, skip_log)` (its
`collect_skipped()` adds the rows the DataLoader workers skipped), `SFTCollator` (model inputs only, for any Trainer)
and `BadSampleReport`.
"""
from multimeditron.data.collator import SFTCollator
from multimeditron.data.dataset import SFTData, build_sft_datasets
from multimeditron.data.report import BadSample, BadSampleReport, DataError

__all__ = ["BadSample", "BadSampleReport", "DataError", "SFTCollator", "SFTData", "build_sft_datasets"]
