"""The engine factory: an :class:`~kun_hpc.inference.engine.EngineSpec` in, the loaded backend out.

Above :mod:`kun_hpc.inference.engine` (the interface) and the two backends that implement it
(:mod:`~kun_hpc.inference.vllm_engine`, :mod:`~kun_hpc.inference.hf_engine`); a backend is imported only when
a spec names it, so neither vLLM nor torch loads for the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kun_hpc.inference.engine import Engine, EngineSpec, go_offline, resolve_model_path


def load_engine(spec: EngineSpec | Mapping[str, Any]) -> Engine:
    """Load the model ``spec`` names with the backend it names (local folders only)."""
    if not isinstance(spec, EngineSpec):
        spec = EngineSpec.from_dict(spec)
    go_offline()
    path = resolve_model_path(spec.model)
    if spec.backend == "vllm":
        from kun_hpc.inference.vllm_engine import VLLMEngine

        return VLLMEngine(spec, path)
    from kun_hpc.inference.hf_engine import HFEngine

    return HFEngine(spec, path)
