"""The run config's checks that need no machine state beyond installed packages: each error names the key at fault.
The model section is checked by building its `MultiMeditronConfig` (`architecture.model_config`); what the training
stages mean (which parts a stage trains) is checked with them, in `training.preflight`."""
from __future__ import annotations

from pathlib import Path

from multimeditron.config.architecture import model_config
from multimeditron.config.schema import RunConfig
from multimeditron.config.training_args import check_training_args
from multimeditron.config.typed import ConfigError


def check_config(config: RunConfig) -> None:
    """Every check of a parsed run config, in the order a reader fixes them: model, data, training, deepspeed."""
    model = config.model
    if model.base_model is None:
        if model.llm is None:
            raise ConfigError("model.llm: required unless model.base_model names an earlier stage's output")
        if not model.experts:
            raise ConfigError("model.experts: at least one expert is needed to build a new model")
        # The architecture as the model validates it (a base_model's is checked against the stored one); the section
        # then holds what the model holds (a negative generalist_index counted from the end).
        model.generalist_index = model_config(model).generalist_index
    if not config.data.train:
        raise ConfigError("data.train: at least one dataset is needed")
    for section, entries in (("train", config.data.train), ("eval", config.data.eval)):
        for i, entry in enumerate(entries):
            if entry.weight <= 0:
                raise ConfigError(f"data.{section}[{i}].weight: must be positive, got {entry.weight}")
            if entry.max_samples is not None and entry.max_samples <= 0:
                raise ConfigError(f"data.{section}[{i}].max_samples: must be positive, got {entry.max_samples}")
    if not 0.0 <= config.data.max_bad_sample_share <= 1.0:
        raise ConfigError(f"data.max_bad_sample_share: must lie between 0 and 1, "
                          f"got {config.data.max_bad_sample_share}")
    if config.data.max_sequence_length < 16:
        raise ConfigError(f"data.max_sequence_length: {config.data.max_sequence_length} is too small")
    check_training_args(config.training_args)
    _check_packing(config)
    if config.deepspeed is not None and not Path(config.deepspeed).is_file():
        raise ConfigError(f"deepspeed: file {config.deepspeed} does not exist")
    if config.part_learning_rates is not None:
        for part, value in config.part_learning_rates.as_dict().items():
            if value <= 0:
                raise ConfigError(f"part_learning_rates.{part}: must be positive, got {value}")


def _check_packing(config: RunConfig) -> None:
    """Refuse packing where packed samples could see each other. Every `attn_implementation` above has a path that
    keeps them apart (model.packed_attention: block mask for sdpa/eager, varlen lengths for flash-attn, a BlockMask
    for flex), but only through transformers' own attention code."""
    if not config.data.packing:
        return
    if config.model.trust_remote_code:
        raise ConfigError("data.packing: model.trust_remote_code runs the LLM's own modeling code, which may ignore "
                          "the block mask or varlen lengths that keep packed samples apart; set data.packing: false")
    if config.model.attn_implementation == "flex_attention":
        from importlib.metadata import version

        from packaging.version import Version

        if Version(version("torch")).release < (2, 5):
            raise ConfigError(f"data.packing: flex_attention keeps packed samples apart with a BlockMask, which "
                              f"needs torch >= 2.5 (installed: {version('torch')}); use flash_attention_2 or sdpa")
