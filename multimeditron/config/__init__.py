"""The run configuration: one typed YAML schema (model, data, stage, lora, training_args, deepspeed, seed), read and
checked with messages that name the offending key; unknown keys are refused so typos surface.

The public names of the package; its modules: `schema` (the sections), `typed` (sections from raw mappings),
`loading` (YAML, environment, `--set`), `validation` and `training_args` (the checks), `architecture` (the model
section -> `MultiMeditronConfig`).
"""
from multimeditron.choices import STAGES, Stage
from multimeditron.config.architecture import check_base_model_agrees, model_config
from multimeditron.config.loading import (
    PUBLISHED_MARKERS,
    is_published_config,
    load_config,
    parse_config,
    read_config_mapping,
    set_override,
    set_value,
    substitute_env,
)
from multimeditron.config.schema import (
    LoraSection,
    ModelSection,
    PartLearningRates,
    RouterClassifierSection,
    RunConfig,
)
from multimeditron.config.training_args import check_training_args, without_half_precision_on_cpu
from multimeditron.config.typed import ConfigError, parse_section, written_keys
from multimeditron.data.dataset import DataSection
from multimeditron.data.sources import DatasetEntry

__all__ = [
    "PUBLISHED_MARKERS", "STAGES", "ConfigError", "DataSection", "DatasetEntry", "LoraSection", "ModelSection",
    "PartLearningRates", "RouterClassifierSection", "RunConfig", "Stage", "check_base_model_agrees",
    "check_training_args", "is_published_config", "load_config", "model_config", "parse_config", "parse_section",
    "read_config_mapping", "set_override", "set_value", "substitute_env", "without_half_precision_on_cpu",
    "written_keys",
]
