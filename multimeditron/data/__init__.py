"""The data path: MultiMediset loading and mixing, image decoding, chat-template labels, packing and collation.

Trainer-facing API: `build_sft_datasets(data, processor, seed) -> SFTData(train, eval, report)`, `SFTCollator`
(its batches carry a `bad_samples` report to pop before the forward) and `BadSampleReport`.
"""
from multimeditron.data.collator import REPORT_KEY, SFTCollator
from multimeditron.data.dataset import SFTData, build_sft_datasets
from multimeditron.data.report import BadSample, BadSampleReport, DataError

__all__ = ["REPORT_KEY", "BadSample", "BadSampleReport", "DataError", "SFTCollator", "SFTData", "build_sft_datasets"]
