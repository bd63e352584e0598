"""`MultiMeditronForCausalLM`: a causal LM whose image-token positions receive the vision stack's projected features."""
from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast, MoeCausalLMOutputWithPast

from multimeditron.model.configuration import MultiMeditronConfig
from multimeditron.model.packed_attention import packed_attention_inputs
from multimeditron.model.router import Routing
from multimeditron.model.vision_stack import VisionStack


@dataclass
class MultiMeditronCausalLMOutput(MoeCausalLMOutputWithPast):
    """The causal LM output with the router's decisions, as Mixtral returns its router logits: `router_probs`
    (num_images, E), the gate's (or the pretrained classifier's) expert probabilities; `expert_mask` (num_images, E),
    the experts each image ran (one all-False row for a batch without images, which ran the vision stack on a blank
    canvas); `aux_loss`, the learned router's load-balancing term (`model.router.load_balancing_loss`), not weighted
    and not added to `loss`: the trainer adds `router_aux_loss_coef` times it where it reduces the loss."""

    router_probs: torch.Tensor | None = None
    expert_mask: torch.Tensor | None = None


class MultiMeditronPreTrainedModel(PreTrainedModel):
    config_class = MultiMeditronConfig
    config: MultiMeditronConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["VisionStack"]


class MultiMeditronForCausalLM(MultiMeditronPreTrainedModel, GenerationMixin):
    """Wraps any `AutoModelForCausalLM` (`language_model`) with a `VisionStack` (`vision`)."""

    def __init__(self, config: MultiMeditronConfig, language_model: PreTrainedModel | None = None) -> None:
        # The model's own config (a shallow copy: text_config stays the LLM's): it records below what the experts
        # resolved, and the caller's config is left as given.
        config = copy.copy(config)
        super().__init__(config)
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(
                config.text_config, attn_implementation=config._attn_implementation)
        self.language_model = language_model
        self.vision = VisionStack(config, config.text_config.hidden_size)
        config.experts = self.vision.expert_specs
        if config.image_token_id is None:
            raise ValueError("image_token_id: the config does not name the image token; build the model with "
                             "multimeditron.build_model so that the special tokens are added to the tokenizer")
        self.post_init()

    # Nothing is initialised here: the LLM keeps its own weights and each new module (experts, projectors, router,
    # fusion) initialises itself when built, so `post_init` must not overwrite either.
    def _init_weights(self, module: torch.nn.Module) -> None:
        return

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> "MultiMeditronForCausalLM":
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.vision.restore_non_persistent_buffers(model.config.experts)
        return loaded

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_image_tokens

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: torch.nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> torch.nn.Module:
        return self.language_model.get_decoder()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Canvas images (num_images, 3, S, S) in [0, 1] -> (num_images, num_image_tokens, hidden_size)."""
        features, _ = self.vision(pixel_values)
        return features

    def merge_image_features(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor,
                             pixel_values: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        """Write the image features into the image-token positions, after checking that the counts agree; also
        return the routing that weighted the experts."""
        image_mask = input_ids == self.config.image_token_id
        n_tokens = int(image_mask.sum())
        n_images = pixel_values.shape[0]
        n_features = n_images * self.num_image_tokens
        if n_tokens != n_features:
            raise ValueError(
                f"image tokens and image features do not match: the input holds {n_tokens} image tokens but "
                f"{n_images} image(s) give {n_features} features ({self.num_image_tokens} per image); expand each "
                "image placeholder with MultiMeditronProcessor"
            )
        if n_images == 0:
            # A batch without images still runs the vision stack, on one blank canvas weighted zero: under ZeRO-3
            # every rank must join the vision parameters' gathers, also when other ranks' batches hold images.
            blank, routing = self.vision(pixel_values.new_zeros(1, *pixel_values.shape[1:]))
            # No image, no routing decision: zero weights make the balance term 0 and count no expert use, yet it
            # keeps its graph, so the output holds the same tensors as on ranks with images (ZeRO-3 hooks count them).
            routing = dataclasses.replace(routing, weights=torch.zeros_like(routing.weights))
            return inputs_embeds + blank.sum().to(inputs_embeds.dtype) * 0, routing
        features, routing = self.vision(pixel_values)
        features = features.to(inputs_embeds.device, inputs_embeds.dtype)
        mask = image_mask.unsqueeze(-1).expand_as(inputs_embeds)
        return inputs_embeds.masked_scatter(mask, features), routing

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        sample_ids: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        routing = None  # a forward without pixel_values (text, or a generation step after the first) routes nothing
        # transformers renamed past_key_values -> cache (generate passes `cache`); take either, hand on the LLM's name
        cache = kwargs.pop("cache", None)
        past_key_values = cache if cache is not None else past_key_values
        if past_key_values is not None:
            kwargs[self._cache_argument()] = past_key_values
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            if pixel_values is not None:
                inputs_embeds, routing = self.merge_image_features(input_ids, inputs_embeds, pixel_values)
            elif (past_key_values is None or past_key_values.get_seq_length() == 0) and bool(
                    (input_ids == self.config.image_token_id).any()):
                raise ValueError("the input holds image tokens but no pixel_values were given")
        elif pixel_values is not None:
            raise ValueError("pixel_values need input_ids (to find the image tokens), not inputs_embeds")
        if sample_ids is not None:  # packed rows (SFTCollator(packing=True)): see model.packed_attention
            if attention_mask is not None or position_ids is not None:
                raise ValueError("packed rows: pass sample_ids alone; attention_mask and position_ids are derived "
                                 "from it for the attention implementation in use")
            packed = packed_attention_inputs(sample_ids.to(inputs_embeds.device),
                                             self.language_model.config._attn_implementation, inputs_embeds.dtype)
            attention_mask, position_ids = packed.pop("attention_mask"), packed.pop("position_ids")
            kwargs.update(packed)
        if labels is not None and self.training and isinstance(logits_to_keep, int) and logits_to_keep == 0 \
                and self._logits_are_plain_projection():
            return self._with_routing(
                self._forward_labelled_positions(inputs_embeds, attention_mask, position_ids, labels, **kwargs),
                routing)
        return self._with_routing(self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        ), routing)

    def _cache_argument(self) -> str:
        """The name the wrapped LLM's forward takes the KV cache under (`cache` in newer transformers)."""
        parameters = inspect.signature(self.language_model.forward).parameters
        return "cache" if "cache" in parameters else "past_key_values"

    @staticmethod
    def _with_routing(output: CausalLMOutputWithPast, routing: Routing | None) -> CausalLMOutputWithPast:
        """With a learned or pretrained router: its decisions in the output (`MultiMeditronCausalLMOutput`), and the
        balance term where it applies (the learned router)."""
        if routing is None or routing.probs is None:
            return output
        return MultiMeditronCausalLMOutput(**output, aux_loss=routing.balance_loss(), router_probs=routing.probs,
                                           expert_mask=routing.selected)

    # LLM families whose logits are the LM head's plain projection of the last hidden state, the only thing the
    # labelled-positions path below reproduces. An allow-list: a family not named here (Gemma 2's soft-capping,
    # Cohere's or Granite's scaling, one not yet known) keeps the LLM's own forward, slower but always right.
    PLAIN_LOGIT_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "apertus"})

    def _logits_are_plain_projection(self) -> bool:
        return getattr(self.config.text_config, "model_type", None) in self.PLAIN_LOGIT_FAMILIES

    def _forward_labelled_positions(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                                    position_ids: torch.Tensor | None, labels: torch.Tensor,
                                    num_items_in_batch: torch.Tensor | int | None = None,
                                    **kwargs: Any) -> CausalLMOutputWithPast:
        """Training loss with the LM head applied only where a label is predicted.

        In VLM SFT most positions are image or prompt tokens without a label, and the (tokens x vocabulary) logits
        of those positions are the largest activation of the step; they are never computed here. Same loss as the
        LLM's own (HF `ForCausalLMLoss`: shifted labels, float32 cross entropy, sum / `num_items_in_batch` when the
        Trainer passes it, else the mean); `logits` holds only the labelled positions' rows, in order.
        """
        hidden = self.language_model.get_decoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
            **kwargs).last_hidden_state
        targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].to(hidden.device)
        keep = targets != -100
        logits = self.get_output_embeddings()(hidden[keep]).float()
        loss = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
        # A batch without labels gives 0 (with a graph, so every rank still runs its backward), not NaN.
        divisor = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
        if torch.is_tensor(divisor):
            divisor = divisor.to(loss.device)
        return CausalLMOutputWithPast(loss=loss / divisor, logits=logits)
