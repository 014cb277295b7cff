"""Text generation with a small LLM: the ONNX graphs and KV cache (``model``), sampling and streaming
(``generate``), chat templates and multi-turn conversations (``chat``).

Entry points: :class:`LanguageModel` (load a bundle), :func:`ask` (one question) and :class:`Chat` (a conversation),
both returning a streaming :class:`Generation`.
"""

from edgemm.runtime.llm.chat import DEFAULT_SYSTEM, Chat, PromptError, ask, system_prompt
from edgemm.runtime.llm.generate import Generation, GenerationOptions
from edgemm.runtime.llm.model import CacheBusyError, ContextError, LanguageModel

__all__ = [
    "DEFAULT_SYSTEM",
    "CacheBusyError",
    "Chat",
    "ContextError",
    "Generation",
    "GenerationOptions",
    "LanguageModel",
    "PromptError",
    "ask",
    "system_prompt",
]
