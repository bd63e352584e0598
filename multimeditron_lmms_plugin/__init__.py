"""lmms-eval entry point (`lmms_eval.models`: multimeditron = "multimeditron_lmms_plugin:MANIFEST").

lmms-eval imports this module on every run, so it imports nothing heavy: no torch, no multimeditron, not even
lmms-eval itself until MANIFEST is read (module `__getattr__`), which also avoids an import cycle with lmms-eval's
registry, the only thing that reads it."""
from __future__ import annotations

from typing import Any

MODEL_ID = "multimeditron"
CHAT_CLASS_PATH = "multimeditron.evaluation.lmms_model.MultiMeditronLMMS"


def __getattr__(name: str) -> Any:
    if name == "MANIFEST":
        from lmms_eval.models.registry_v2 import ModelManifest

        return ModelManifest(model_id=MODEL_ID, chat_class_path=CHAT_CLASS_PATH)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
