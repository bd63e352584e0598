"""Checks of a run that need the machine (installed packages, files on disk), made before anything heavy is built.

`check_run` raises the first problem as a `ConfigError` naming the key and, for paths, the path. `train --dry-run`
runs the same checks except those on paths that may not exist yet (an earlier stage's output, datasets on another
machine): it lists those as lines of the plan (`path_problems`).
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import torch

from multimeditron.config import ConfigError, RunConfig, model_config, written_keys
from multimeditron.data.sources import split_names
from multimeditron.hub_ids import looks_like_hub_id
from multimeditron.model.builder import offline_llm_config
from multimeditron.presets import TINY_LLMS
from multimeditron.training.stages import STAGE_PARTS


def check_run(config: RunConfig, paths: bool = True) -> None:
    """Every check below; with `paths=False` (dry run) the path checks are left to `path_problems`."""
    _check_llm_name(config)
    _check_architecture(config)
    _check_stage_parts(config)
    _check_combinations(config)
    _check_expert_options(config)
    _check_lora_targets(config)
    if paths:
        problems = path_problems(config)
        if problems:
            raise ConfigError(problems[0])


def _check_llm_name(config: RunConfig) -> None:
    llm = config.model.llm
    if llm is not None and llm.startswith("tiny-") and llm not in TINY_LLMS and not Path(llm).exists():
        raise ConfigError(f"model.llm: {llm!r} is not a tiny preset; the presets are {sorted(TINY_LLMS)}")


def _check_architecture(config: RunConfig) -> None:
    """A new model's architecture was validated with the config (`multimeditron.config.model_config`); its expert ids
    are checked here against the registry. Beside `base_model`, every written architecture key must agree with the
    stored one: the stored config is built through the same function the run uses."""
    from multimeditron.experts.registry import available_experts

    section = config.model
    if section.base_model is not None:
        if (Path(section.base_model) / "config.json").is_file():
            problems = _model_folder_problem("model.base_model", section.base_model, multimeditron=True)
            if problems:  # e.g. a plain LLM's folder
                raise ConfigError(problems[0])
            model_config(section)
        return
    from multimeditron.experts.adapted import adapted_spec

    known = available_experts()
    prefixes = [k[: -len("<name>")] for k in known if k.endswith("<name>")]
    for i, expert in enumerate(section.experts):
        if expert.id not in known and not any(expert.id.startswith(p) for p in prefixes):
            raise ConfigError(f"model.experts[{i}].id: unknown expert {expert.id!r}; valid ids: {known}")
        try:  # an adapted-expert folder (finetune/adapt) must agree with the spec that names it
            adapted_spec(expert)
        except ValueError as error:
            raise ConfigError(f"model.experts[{i}]: {error}") from error


def _check_stage_parts(config: RunConfig) -> None:
    """What the stage trains (`STAGE_PARTS`) against LoRA and the per-part learning rates."""
    trained = STAGE_PARTS[config.stage]
    if config.lora is not None and "llm" not in trained:
        llm_stages = ", ".join(name for name, parts in STAGE_PARTS.items() if "llm" in parts)
        raise ConfigError(f"lora: stage {config.stage!r} does not train the LLM; LoRA needs one of {llm_stages}")
    if config.part_learning_rates is None:
        return
    for part in config.part_learning_rates.as_dict():
        if part not in trained:
            raise ConfigError(f"part_learning_rates.{part}: stage {config.stage!r} does not train this part "
                              f"(it trains {sorted(trained)})")
    if config.deepspeed is not None and "optimizer" in read_deepspeed(config.deepspeed):
        raise ConfigError(f"part_learning_rates: the DeepSpeed file {config.deepspeed} defines its own "
                          "`optimizer`, which would ignore per-part learning rates; remove one of the two")


def read_deepspeed(path: str) -> dict:
    """The DeepSpeed JSON file of the config; an unreadable one is an error naming the key."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"deepspeed: {path} is not a readable JSON file: {error}") from error


def _check_expert_options(config: RunConfig) -> None:
    """Experts with `options` are built on the meta device (no memory, no checkpoint): an option their family's
    builder does not accept (timm/open_clip keyword arguments, the family's own) is named here, not mid-run."""
    from multimeditron.experts.registry import build_expert

    for i, spec in enumerate(config.model.experts):
        if not spec.options:
            continue
        try:
            with torch.device("meta"):
                build_expert(spec, load_checkpoint=False)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"model.experts[{i}].options: {spec.id} does not accept {spec.options}: {error}") \
                from error
        except KeyError as error:
            raise ConfigError(f"model.experts[{i}].id: {error.args[0]}") from error
        except OSError:
            pass  # the architecture needs files beside a checkpoint or the hub: the run reports that itself


def _check_lora_targets(config: RunConfig) -> None:
    """Each LoRA target must name modules of the LLM (PEFT only refuses a list none of whose names matches); the
    LLM is built on the meta device from its config when that is available offline."""
    lora = config.lora
    if not lora or lora.target_modules == "all-linear":
        return
    text_config = _text_config(config)
    if text_config is None:
        return
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        names = [name for name, _ in AutoModelForCausalLM.from_config(text_config).named_modules() if name]
    targets = [lora.target_modules] if isinstance(lora.target_modules, str) else lora.target_modules
    for target in targets:
        if isinstance(lora.target_modules, str):
            matched = any(re.fullmatch(target, name) for name in names)
        else:
            matched = any(name == target or name.endswith("." + target) for name in names)
        if not matched:
            leaves = sorted({name.rsplit(".", 1)[-1] for name in names if not name.rsplit(".", 1)[-1].isdigit()})
            raise ConfigError(f"lora.target_modules: {target!r} matches no module of the LLM; its module names "
                              f"end in {leaves}")


def _text_config(config: RunConfig):
    section = config.model
    if section.base_model is not None:
        if not (Path(section.base_model) / "config.json").is_file():
            return None
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(section.base_model).text_config
    return offline_llm_config(section.llm)


def _check_combinations(config: RunConfig) -> None:
    section, args = config.model, config.training_args
    if section.attn_implementation == "flash_attention_2":
        if not torch.cuda.is_available():
            raise ConfigError("model.attn_implementation: flash_attention_2 needs a CUDA GPU and there is none here; "
                              "use auto or sdpa")
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("model.attn_implementation: flash_attention_2 needs the flash-attn package "
                              "(pip install -e '.[flash-attn]'); use auto or sdpa")
    strategy = str(args.get("eval_strategy", "no"))
    if strategy not in ("no", "IntervalStrategy.NO") and not config.data.eval:
        raise ConfigError(f"training_args.eval_strategy: {strategy!r} evaluates during training, but data.eval "
                          "lists no dataset; add one or remove eval_strategy")
    if args.get("load_best_model_at_end") and not config.data.eval:
        raise ConfigError("training_args.load_best_model_at_end: needs data.eval to pick the best model")


def path_problems(config: RunConfig) -> list[str]:
    """Local paths the config names that are missing or do not hold what they should, as `key: reason` lines."""
    section, problems = config.model, []
    if section.base_model is not None:
        problems += _model_folder_problem("model.base_model", section.base_model, multimeditron=True)
    elif section.llm is not None and section.llm not in TINY_LLMS:
        problems += _model_folder_problem("model.llm", section.llm, multimeditron=False)
    if section.base_model is None or "experts" in written_keys(section):
        for i, expert in enumerate(section.experts):
            checkpoint = expert.checkpoint
            if checkpoint and not looks_like_hub_id(checkpoint, with_file=True) \
                    and not Path(checkpoint).expanduser().exists():
                problems.append(f"model.experts[{i}].checkpoint: {checkpoint} does not exist")
        gate = section.router_classifier.checkpoint if section.router_classifier else None
        if gate and not looks_like_hub_id(gate, with_file=True) and not Path(gate).expanduser().exists():
            problems.append(f"model.router_classifier.checkpoint: {gate} does not exist")
    for name, entries, default_split in (("train", config.data.train, "train"), ("eval", config.data.eval, "test")):
        for i, entry in enumerate(entries):
            problem = _dataset_problem(entry.path, entry.split or default_split, entry.split is not None)
            if problem:
                problems.append(f"data.{name}[{i}].path: {problem}")
    resume = config.training_args.get("resume_from_checkpoint")
    if resume is True:
        from transformers.trainer_utils import get_last_checkpoint

        output_dir = Path(config.training_args["output_dir"])
        if not output_dir.is_dir() or get_last_checkpoint(str(output_dir)) is None:
            problems.append(f"training_args.resume_from_checkpoint: true, but {output_dir} holds no checkpoint-* "
                            "folder to resume from")
    elif isinstance(resume, str) and not Path(resume).is_dir():
        problems.append(f"training_args.resume_from_checkpoint: {resume} is not a checkpoint folder")
    if config.deepspeed is not None:
        try:
            read_deepspeed(config.deepspeed)
        except ConfigError as error:
            problems.append(str(error))
    return problems


def _model_folder_problem(key: str, value: str, multimeditron: bool) -> list[str]:
    folder = Path(value).expanduser()
    if not folder.exists():
        if looks_like_hub_id(value):
            return []  # a hub id: loaded (or refused) by transformers
        return [f"{key}: {value} does not exist (and is not a hub id owner/name)"]
    if not (folder / "config.json").is_file():
        return [f"{key}: {value} holds no model (no config.json)"]
    if multimeditron:
        try:
            model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        except ValueError as error:
            return [f"{key}: {folder / 'config.json'} is not valid JSON: {error}"]
        if model_type != "multimeditron":
            return [(f"{key}: {value} holds a {model_type!r} model, not a MultiMeditron model (an earlier stage's "
                     "output); a plain LLM goes in model.llm")]
    return []


def _dataset_problem(path: str, split: str, split_given: bool) -> str | None:
    local = Path(path).expanduser()
    if any(c in path for c in "*?["):
        return None if list(local.parent.glob(local.name)) else f"{path} matches no file"
    if not local.exists():
        return None if looks_like_hub_id(path) else f"{path} does not exist"
    splits = split_names(local)  # the loader's own reading of the folder (DatasetDict, or split-named files)
    if splits is not None:
        if split not in splits:
            return f"{path} has no split {split!r}; its splits: {sorted(splits)}"
        if (local / split / "state.json").is_file() and not _saved_rows(local / split):
            return f"{path}[{split}] has no rows"
    elif local.is_dir() and (local / "state.json").is_file():
        if split_given:
            return f"{path} is a single Dataset without splits; remove `split`"
        if not _saved_rows(local):
            return f"{path} has no rows"
    elif local.is_dir() and not any(f.suffix.lower() in (".parquet", ".arrow") for f in local.rglob("*")):
        return f"{path} holds no save_to_disk dataset, parquet or arrow files"
    return None


def _saved_rows(folder: Path) -> bool:
    """Whether a save_to_disk folder holds data files (a 0-row dataset is saved without any)."""
    try:
        return bool(json.loads((folder / "state.json").read_text()).get("_data_files"))
    except (OSError, ValueError):
        return True  # unreadable: left to the loader, which names the dataset
