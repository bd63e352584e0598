"""MultiMeditron: medical vision-language models from a chat LLM and one or several vision experts."""
from multimeditron.model import MultiMeditronConfig, MultiMeditronForCausalLM
from multimeditron.model.builder import build_model, load_llm
from multimeditron.model.processing import MultiMeditronProcessor

__version__ = "0.1.0"
__all__ = ["MultiMeditronConfig", "MultiMeditronForCausalLM", "MultiMeditronProcessor", "build_model", "load_llm"]
