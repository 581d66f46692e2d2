"""Reflection memory (training-free GRPO, ALGORITHMS.md; docs/memory.md): a SQLite lesson library with an ops log
(library.py), a reflector that turns groups of trajectories into library operations (reflector.py, prompts in
prompts.py), lesson injection and BM25 retrieval as the `lessons` env wrapper (inject.py), the chat models the
reflector talks to (llm.py), and the modes: `agentrl reflect`, `agentrl distill`, memory during RL (modes.py)."""
from .inject import LessonsWrapper, render_lessons, select_lessons  # noqa: F401  (registers the "lessons" wrapper)
from .library import Lesson, LessonLibrary, Op  # noqa: F401
from .llm import CHAT_MODELS, ChatModel, OpenAIChat, ScriptedChat, make_chat_model  # noqa: F401
from .prompts import PROMPTS_VERSION  # noqa: F401
from .reflector import Reflector, ReflectReport, merge_ops  # noqa: F401
