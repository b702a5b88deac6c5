"""LLM inference for the Label / Point / Answer stages: one interface, vLLM and transformers backends."""

from kun_hpc.inference.backends import load_engine
from kun_hpc.inference.engine import (
    BACKENDS,
    FINISH_LENGTH,
    FINISH_PROMPT_TOO_LONG,
    FINISH_STOP,
    Engine,
    EngineSpec,
    Generation,
    ModelPathError,
    PromptTooLong,
    SamplingSpec,
    load_tokenizer,
    resolve_model_path,
)
from kun_hpc.inference.prompt import Prompt, PromptLike, encode_prompts, special_tokens

__all__ = [
    "BACKENDS",
    "FINISH_LENGTH",
    "FINISH_PROMPT_TOO_LONG",
    "FINISH_STOP",
    "Engine",
    "EngineSpec",
    "Generation",
    "ModelPathError",
    "Prompt",
    "PromptLike",
    "PromptTooLong",
    "SamplingSpec",
    "encode_prompts",
    "load_engine",
    "load_tokenizer",
    "resolve_model_path",
    "special_tokens",
]
