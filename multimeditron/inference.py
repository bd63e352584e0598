"""Inference helpers: load a saved model, answer batches of image+text chats, score a continuation's log-probability.

A request is `(chat, images)`: `chat` is a list of `{role, content}` messages whose text holds one attachment
placeholder (`processor.attachment_token`, `<|image|>` by default) per image, or a plain question string;
`images` are PIL images in placeholder order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from multimeditron.data.images import ImageResolver
from multimeditron.dtypes import parse_dtype
from multimeditron.errors import UserError
from multimeditron.hub_ids import looks_like_hub_id
from multimeditron.model.modeling import MultiMeditronForCausalLM
from multimeditron.model.processing import MultiMeditronProcessor, split_content

Chat = list[dict[str, Any]]
Request = tuple[Chat | str, Sequence[Image.Image]]


class ModelFolderError(UserError, FileNotFoundError):
    """A model path that is neither a saved model folder nor a loadable hub id."""



def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else this process's GPU (accelerate's `PartialState`: cuda:LOCAL_RANK under torchrun or
    accelerate launch) when there is one, else the CPU."""
    if device is not None and str(device) not in ("", "auto"):
        return torch.device(device)
    from accelerate import PartialState

    state_device = PartialState().device
    return state_device if state_device.type == "cuda" else torch.device("cpu")


def check_model_path(path: str | os.PathLike) -> Path:
    """The model folder `path` names, refused when it holds no saved model, or is missing and no hub id."""
    folder = Path(path).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ModelFolderError(f"model folder {path} holds no saved model (no config.json)")
    if not folder.exists() and not looks_like_hub_id(str(path)):
        raise ModelFolderError(f"model folder {path} does not exist")
    return folder


def load_pretrained(
    path: str | os.PathLike,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> tuple[MultiMeditronForCausalLM, MultiMeditronProcessor]:
    """A saved model folder (`model.save_pretrained(d); processor.save_pretrained(d)`) -> (model in eval mode on
    `device`, processor). `dtype`: "auto" (as saved), a name of `multimeditron.dtypes.DTYPES` or a torch dtype."""
    kwargs: dict[str, Any] = {"dtype": parse_dtype(dtype, allow_auto=True)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    folder = check_model_path(path)
    try:
        model = MultiMeditronForCausalLM.from_pretrained(path, **kwargs)
    except OSError as error:
        if folder.exists():
            raise
        # owner/name shaped (`runs/stage2` too): transformers tried the hub; say first that no such folder exists.
        raise ModelFolderError(f"model folder {path} does not exist, and as a hub id it could not be loaded: "
                               f"{str(error).splitlines()[0]}") from error
    processor = MultiMeditronProcessor.from_pretrained(path)
    return model.to(resolve_device(device)).eval(), processor


def messages_to_chat(messages: Iterable[dict[str, Any]], attachment_token: str,
                     image_dir: str | os.PathLike | None = None,
                     separator: str = "\n") -> tuple[Chat, list[Image.Image]]:
    """OpenAI/lmms-eval/HF style messages (content = str or parts `{"type": "image", "url"|"image"|"path": PIL,
    bytes, {bytes, path} or path}` / `{"type": "text", "text": ...}`) -> our chat (one placeholder per image, parts
    joined by `separator`, a newline unless the task says otherwise) + the images, decoded by the one decoder
    training uses (`multimeditron.data.images`); relative paths resolve against `image_dir` (default: the current
    folder)."""
    chat, values = split_content(list(messages), attachment_token, separator)
    resolver = ImageResolver(default_dir=image_dir or os.getcwd())
    return chat, [resolver.load(value) for value in values]


def render_prompt(processor: MultiMeditronProcessor, chat: Chat | str, system_prompt: str | None = None) -> str:
    """The chat template text (placeholders unexpanded) ending with the assistant's generation prompt."""
    messages = [{"role": "user", "content": chat}] if isinstance(chat, str) else list(chat)
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """The text before the first occurrence of any stop string."""
    cut = min((text.find(s) for s in stop or () if s and s in text), default=len(text))
    return text[:cut]


def _eos_ids(model: MultiMeditronForCausalLM, processor: MultiMeditronProcessor) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if processor.tokenizer.eos_token_id is not None:
        ids.append(processor.tokenizer.eos_token_id)
    return sorted(set(ids))


def _pad_id(model: MultiMeditronForCausalLM, processor: MultiMeditronProcessor) -> int:
    pad = processor.tokenizer.pad_token_id
    return pad if pad is not None else _eos_ids(model, processor)[0]


def _progress(progress: Any, total: int, desc: str) -> tuple[Any, bool]:
    """(bar or None, whether this call owns it): True -> a new bar, False -> none, a tqdm -> advance that one."""
    if isinstance(progress, bool):
        return (tqdm(total=total, desc=desc, dynamic_ncols=True) if progress else None), True
    return progress, False


@torch.inference_mode()
def generate_answers(
    model: MultiMeditronForCausalLM,
    processor: MultiMeditronProcessor,
    requests: Sequence[Request],
    batch_size: int = 8,
    max_new_tokens: int = 64,
    stop: Sequence[str] | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    num_beams: int = 1,
    repetition_penalty: float | None = None,
    system_prompt: str | None = None,
    progress: bool | tqdm = True,
) -> list[str]:
    """One answer per request, in request order. Requests are batched (left padding), longest first so that a
    batch holds prompts of similar length; generation stops early at any `stop` string and each answer is cut
    before its first stop string and stripped. `progress`: True for a bar, False for none, or a tqdm to advance."""
    prompts = [render_prompt(processor, chat, system_prompt) for chat, _ in requests]
    order = sorted(range(len(prompts)), key=lambda i: -len(processor.expand_placeholders(prompts[i])))
    stop = [s for s in stop or () if s]
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "num_beams": num_beams,
                               "eos_token_id": _eos_ids(model, processor),
                               "pad_token_id": _pad_id(model, processor),
                               # an image token in an answer would be an embedding with no image behind it
                               "suppress_tokens": [processor.image_token_id, processor.image_start_token_id,
                                                   processor.image_end_token_id]}
    if do_sample:
        options.update(temperature=temperature, top_p=top_p, top_k=top_k)
    else:  # greedy: silence transformers' warnings about sampling settings inherited from generation_config
        options.update(temperature=None, top_p=None, top_k=None)
    if repetition_penalty is not None:
        options["repetition_penalty"] = repetition_penalty
    if stop:
        options.update(stop_strings=stop, tokenizer=processor.tokenizer)
    answers: list[str] = [""] * len(prompts)
    bar, owned = _progress(progress, len(prompts), "generating")
    for start in range(0, len(order), max(1, batch_size)):
        batch = order[start:start + max(1, batch_size)]
        inputs = processor([prompts[i] for i in batch], images=[list(requests[i][1]) for i in batch],
                           padding_side="left").to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        output = model.generate(**inputs, **options)
        texts = processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for index, text in zip(batch, texts):
            answers[index] = cut_at_stop(text, stop).strip()
        if bar is not None:
            bar.update(len(batch))
    if bar is not None and owned:
        bar.close()
    return answers


@torch.inference_mode()
def continuation_logprob(
    model: MultiMeditronForCausalLM,
    processor: MultiMeditronProcessor,
    context: Chat | str,
    continuation: str,
    images: Sequence[Image.Image] = (),
    system_prompt: str | None = None,
) -> tuple[float, bool]:
    """(sum of the log-probabilities of the continuation's tokens given the rendered context (<= 0), whether
    greedy decoding would produce exactly those tokens). The continuation is tokenised on its own and appended,
    so its tokens are the ones scored whatever the context ends with."""
    prompt = render_prompt(processor, context, system_prompt)
    inputs = processor(prompt, images=list(images))
    target = processor.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if target.shape[1] == 0:
        return 0.0, True
    input_ids = torch.cat([inputs["input_ids"], target], dim=1).to(model.device)
    pixel_values = inputs["pixel_values"].to(model.device, model.dtype)
    logits = model(input_ids=input_ids, pixel_values=pixel_values).logits[0].float()
    scored = torch.log_softmax(logits[-target.shape[1] - 1:-1], dim=-1)
    target = target[0].to(model.device)
    logprob = scored.gather(1, target[:, None]).sum().item()
    return logprob, bool((scored.argmax(-1) == target).all())


__all__ = ["load_pretrained", "generate_answers", "continuation_logprob", "messages_to_chat", "render_prompt",
           "cut_at_stop", "resolve_device", "ModelFolderError"]
