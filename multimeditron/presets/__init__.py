"""Tiny presets for offline use: a small LLM config per family with a small tokenizer built offline with that family's
special tokens and chat template (a compact rendering of the published template: same tokens and turn structure).

`tiny-qwen3`, `tiny-llama`, `tiny-apertus` go through the same code as the full-size models; any other name is a
hub id or a local folder loaded with `AutoTokenizer` / `AutoModelForCausalLM`.
"""
from multimeditron.presets.tiny_llm import TINY_LLMS, build_tiny_llm, build_tiny_tokenizer, is_tiny_preset

__all__ = ["TINY_LLMS", "build_tiny_llm", "build_tiny_tokenizer", "is_tiny_preset"]
