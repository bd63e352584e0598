"""Adding the image special tokens to a tokenizer and its LLM without shrinking a padded vocabulary."""
from __future__ import annotations

import torch
from tokenizers import AddedToken
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from multimeditron.model.configuration import IMAGE_END_TOKEN, IMAGE_START_TOKEN, IMAGE_TOKEN

# Used when a tokenizer has no pad token and no reserved one to borrow (pad == eos would hide real end tokens).
FALLBACK_PAD_TOKEN = "<|pad|>"
BORROWED_PAD_TOKENS = ("<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>")


def add_image_tokens(tokenizer: PreTrainedTokenizerBase, llm: PreTrainedModel) -> dict[str, int]:
    """Add the image tokens (and a pad token if missing) to the tokenizer; grow the LLM's embeddings only when the
    tokenizer outgrows them, and initialise every new token's input/output embedding to the mean of the old ones.

    Returns the ids of the image tokens, keyed by config field name.
    """
    old_size = len(tokenizer)
    new_tokens = [IMAGE_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN]
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        borrowed = next((t for t in BORROWED_PAD_TOKENS if t in vocab), None)
        if borrowed is None:
            new_tokens.append(FALLBACK_PAD_TOKEN)
        tokenizer.pad_token = borrowed or FALLBACK_PAD_TOKEN
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new_tokens], special_tokens=True)
    new_ids = [i for i in range(old_size, len(tokenizer))]

    embeddings = llm.get_input_embeddings()
    if len(tokenizer) > embeddings.num_embeddings:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for matrix in _embedding_matrices(llm):
            if new_ids:
                matrix[new_ids] = matrix[:old_size].mean(dim=0, keepdim=True).to(matrix.dtype)
    if llm.config.pad_token_id is None:
        llm.config.pad_token_id = tokenizer.pad_token_id
    return {
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "image_start_token_id": tokenizer.convert_tokens_to_ids(IMAGE_START_TOKEN),
        "image_end_token_id": tokenizer.convert_tokens_to_ids(IMAGE_END_TOKEN),
    }


def _embedding_matrices(llm: PreTrainedModel) -> list[torch.Tensor]:
    matrices = [llm.get_input_embeddings().weight]
    output = llm.get_output_embeddings()
    if output is not None and output.weight is not matrices[0]:
        matrices.append(output.weight)
    return matrices
