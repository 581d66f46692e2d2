"""Environments: ToolEnv base over gymnasium.Env, tool schemas and execution, tool-call parsers, checker."""
from .base import CHARSET, MAX_TEXT_CHARS, ToolEnv, canonical_split, sanitize, split_of
from .checker import EnvCheckError, check_env
from .feedback import WRAPPERS, UnaryFeedback, apply_wrappers
from .parsers import PARSERS, HermesParser, ParsedAction, Parser, TagParser, make_parser
from .tools import ToolCall, ToolResult, ToolSet, tool_schema

__all__ = [
    "CHARSET", "MAX_TEXT_CHARS", "ToolEnv", "canonical_split", "sanitize", "split_of", "EnvCheckError",
    "check_env", "PARSERS", "HermesParser", "ParsedAction", "Parser", "TagParser", "make_parser", "ToolCall",
    "ToolResult", "ToolSet", "tool_schema", "WRAPPERS", "UnaryFeedback", "apply_wrappers",
]
