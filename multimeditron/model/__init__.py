"""The MultiMeditron model: configuration, modeling, vision stack and processor; registered with the Auto classes."""
from transformers import (
                            AutoConfig,
                            AutoImageProcessor,
                            AutoModelForCausalLM,
                            AutoModelForImageTextToText,
                            AutoProcessor,
)

from multimeditron.model.configuration import MultiMeditronConfig
from multimeditron.model.image_processing import MultiMeditronImageProcessor
from multimeditron.model.modeling import MultiMeditronForCausalLM
from multimeditron.model.processing import MultiMeditronProcessor

AutoConfig.register(MultiMeditronConfig.model_type, MultiMeditronConfig, exist_ok=True)
AutoModelForCausalLM.register(MultiMeditronConfig, MultiMeditronForCausalLM, exist_ok=True)
AutoModelForImageTextToText.register(MultiMeditronConfig, MultiMeditronForCausalLM, exist_ok=True)
# Pillow only, so the same class serves whichever backend transformers asks for (no "falling back" warning)
AutoImageProcessor.register(MultiMeditronConfig, slow_image_processor_class=MultiMeditronImageProcessor,
                            fast_image_processor_class=MultiMeditronImageProcessor, exist_ok=True)
AutoProcessor.register(MultiMeditronConfig, MultiMeditronProcessor, exist_ok=True)

__all__ = ["MultiMeditronConfig", "MultiMeditronForCausalLM", "MultiMeditronImageProcessor", "MultiMeditronProcessor"]
