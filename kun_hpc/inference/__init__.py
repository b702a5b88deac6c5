"""LLM inference for the Label / Point / Answer stages: one interface, vLLM and transformers backends."""

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
    load_engine,
    resolve_model_path,
)

__all__ = [
    "BACKENDS",
    "FINISH_LENGTH",
    "FINISH_PROMPT_TOO_LONG",
    "FINISH_STOP",
    "Engine",
    "EngineSpec",
    "Generation",
    "ModelPathError",
    "PromptTooLong",
    "SamplingSpec",
    "load_engine",
    "resolve_model_path",
]
