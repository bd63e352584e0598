"""The MultiMeditron model: configuration, modeling, vision stack and processor; registered with the Auto classes."""
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from multimeditron.model.configuration import MultiMeditronConfig
from multimeditron.model.modeling import MultiMeditronForCausalLM

AutoConfig.register(MultiMeditronConfig.model_type, MultiMeditronConfig, exist_ok=True)
AutoModelForCausalLM.register(MultiMeditronConfig, MultiMeditronForCausalLM, exist_ok=True)
AutoModelForImageTextToText.register(MultiMeditronConfig, MultiMeditronForCausalLM, exist_ok=True)

__all__ = ["MultiMeditronConfig", "MultiMeditronForCausalLM"]
