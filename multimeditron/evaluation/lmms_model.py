"""`--model multimeditron` for lmms-eval: a chat-style model (reads each task's `doc_to_messages`) over a saved
MultiMeditron folder. Registered by the light `multimeditron_lmms_plugin` entry point."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm.auto import tqdm

from multimeditron.evaluation.published_tasks import lmms_prompt_join
from multimeditron.inference import (
    continuation_logprob,
    generate_answers,
    load_pretrained,
    messages_to_chat,
    resolve_device,
)

DEFAULT_BATCH_SIZE = 8


class MultiMeditronLMMS(lmms):
    """`--model_args pretrained=DIR[,batch_size=N,dtype=bfloat16,max_new_tokens=N,device=cuda:0,system_prompt=...]`.

    `max_new_tokens` given here overrides every task's value. Under torchrun / accelerate launch each rank loads
    the model on its own device (cuda:LOCAL_RANK when there is a GPU) and takes its rank and the world size from
    accelerate's `PartialState`, which is how lmms-eval shards the requests."""

    is_simple = False

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "MultiMeditronLMMS":
        """`--model_args` plus lmms-eval's own `batch_size` / `max_batch_size` / `device` (always passed; its
        `--batch_size` defaults to 1). A key given in `--model_args` wins, so `pretrained=DIR,batch_size=8` works
        instead of failing with "got multiple values for keyword argument 'batch_size'"."""
        from lmms_eval import utils

        args = utils.simple_parse_args_string(arg_string or "")
        extra = {key: value for key, value in (additional_config or {}).items()
                 if value is not None and key not in args}
        return cls(**args, **extra)

    def __init__(self, pretrained: str, batch_size: int | str | None = DEFAULT_BATCH_SIZE, dtype: str = "auto",
                 max_new_tokens: int | str | None = None, device: str | None = None,
                 attn_implementation: str | None = None, system_prompt: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        kwargs.pop("max_batch_size", None)  # lmms-eval passes it whenever set; batches here have a fixed size
        if kwargs:
            logger.warning(f"multimeditron: ignoring unknown model_args {sorted(kwargs)}")
        from accelerate import PartialState

        state = PartialState()  # torchrun / accelerate launch: this process's rank, the world, its GPU
        self._world_size, self._rank = state.num_processes, state.process_index
        if self._world_size > 1:
            # one process per GPU: the rank's own device, whatever --device says
            device = state.device if state.device.type == "cuda" else "cpu"
        self._device = resolve_device(device)
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)  # collectives (NCCL) run on the current device
        self.model, self.processor = load_pretrained(pretrained, dtype=dtype, device=self._device,
                                                     attn_implementation=attn_implementation)
        self.batch_size = _batch_size(batch_size)
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens not in (None, "") else None
        self.system_prompt = self._resolve_system_prompt(system_prompt) if system_prompt else None

    @property
    def device(self) -> torch.device:
        return self._device

    # ---- generation ---------------------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers in request order. Requests sharing a task and generation settings are generated together
        (batched, longest first); `until`, max_new_tokens, temperature, do_sample, top_p, top_k, num_beams and
        repetition_penalty are honoured."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            _, _, gen_kwargs, _, task, _ = request.args
            groups[(task, repr(sorted(gen_kwargs.items())))].append(index)
        answers: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="multimeditron", disable=self.rank != 0, dynamic_ncols=True)
        for indices in groups.values():
            gen_kwargs = dict(requests[indices[0]].args[2])
            batch = [self._chat_request(requests[i]) for i in indices]
            for index, answer in zip(indices, generate_answers(self.model, self.processor, batch, self.batch_size,
                                                               progress=bar, **self._generation_options(gen_kwargs))):
                answers[index] = answer
                self.cache_hook.add_partial("generate_until", (requests[index].args[0], gen_kwargs), answer)
        bar.close()
        return answers

    def _chat_request(self, request: Instance) -> tuple[list[dict[str, Any]], list]:
        _, doc_to_messages, _, doc_id, task, split = request.args
        messages = doc_to_messages(self.task_dict[task][split][doc_id])
        return messages_to_chat(messages, self.processor.attachment_token, separator=lmms_prompt_join(task))

    def _generation_options(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        until = gen_kwargs.get("until") or []
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        do_sample = bool(gen_kwargs.get("do_sample", temperature > 0)) and temperature > 0
        options: dict[str, Any] = {
            "stop": [until] if isinstance(until, str) else list(until),
            "max_new_tokens": self.max_new_tokens or int(gen_kwargs.get("max_new_tokens") or 128),
            "do_sample": do_sample, "num_beams": int(gen_kwargs.get("num_beams") or 1),
            "system_prompt": self.system_prompt,
        }
        if do_sample:
            options.update(temperature=temperature, top_p=float(gen_kwargs.get("top_p") or 1.0))
            if gen_kwargs.get("top_k"):
                options["top_k"] = int(gen_kwargs["top_k"])
        if gen_kwargs.get("repetition_penalty"):
            options["repetition_penalty"] = float(gen_kwargs["repetition_penalty"])
        return options

    # ---- scoring --------------------------------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(sum of the continuation tokens' log-probabilities <= 0, is_greedy) for `(ctx, continuation,
        doc_to_visual, doc_id, task, split)` requests; the context is the user turn, with the doc's images."""
        results = []
        for request in tqdm(requests, desc="multimeditron loglikelihood", disable=self.rank != 0):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            images = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
            images = [image for image in images or [] if image is not None]
            prompt = " ".join([self.processor.attachment_token] * len(images) + [context])
            results.append(continuation_logprob(self.model, self.processor, prompt, continuation, images,
                                                self.system_prompt))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("multimeditron does not implement multi-round generation; run generate_until "
                                  "tasks (all mmd_* tasks are single round)")


def _batch_size(value: int | str | None) -> int:
    # lmms-eval passes "--batch_size" as text and allows "auto" / "auto:N": a fixed default then
    text = str(value if value is not None else DEFAULT_BATCH_SIZE)
    return int(text) if text.isdigit() and int(text) > 0 else DEFAULT_BATCH_SIZE
