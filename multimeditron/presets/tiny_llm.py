"""Builders of the tiny LLM presets: a byte-level BPE tokenizer trained on a small shipped corpus + a 2-layer model."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

TINY_VOCAB = 640
TINY_PADDED_VOCAB = 768  # larger than the tokenizer, like Qwen's padded embedding matrix


@dataclass(frozen=True)
class TinyFamily:
    model_type: str
    template: str
    special_tokens: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    tie_word_embeddings: bool


TINY_LLMS: dict[str, TinyFamily] = {
    "tiny-qwen3": TinyFamily("qwen3", "qwen3.jinja", ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
                             bos=None, eos="<|im_end|>", pad="<|endoftext|>", tie_word_embeddings=True),
    "tiny-llama": TinyFamily("llama", "llama3.jinja",
                             ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                              "<|eot_id|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_0|>"),
                             bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
                             tie_word_embeddings=False),
    "tiny-apertus": TinyFamily("apertus", "apertus.jinja",
                               ("<pad>", "<s>", "</s>", "<|system_start|>", "<|system_end|>", "<|developer_start|>",
                                "<|developer_end|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>",
                                "<|assistant_end|>"),
                               bos="<s>", eos="<|assistant_end|>", pad="<pad>", tie_word_embeddings=False),
}


def is_tiny_preset(name: str) -> bool:
    return name in TINY_LLMS


def _family(name: str) -> TinyFamily:
    if name not in TINY_LLMS:
        raise KeyError(f"unknown tiny LLM preset {name!r}; valid presets: {sorted(TINY_LLMS)}")
    return TINY_LLMS[name]


def build_tiny_tokenizer(name: str) -> PreTrainedTokenizerFast:
    family = _family(name)
    files = resources.files("multimeditron.presets")
    corpus = files.joinpath("corpus.txt").read_text().splitlines()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=list(family.special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=family.bos, eos_token=family.eos,
                                        pad_token=family.pad, clean_up_tokenization_spaces=False)
    tokenizer.chat_template = files.joinpath(family.template).read_text()
    return tokenizer


def build_tiny_llm(name: str, attn_implementation: str = "sdpa") -> PreTrainedModel:
    family = _family(name)
    tokenizer = build_tiny_tokenizer(name)
    config = AutoConfig.for_model(
        family.model_type, vocab_size=TINY_PADDED_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192,
        tie_word_embeddings=family.tie_word_embeddings, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
