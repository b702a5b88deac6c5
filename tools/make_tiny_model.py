"""Build a tiny, deterministic Qwen2-architecture causal LM with a real Chinese byte-level BPE tokenizer.

The model is randomly initialised (fixed seed): it produces garbage, but it has the exact architecture,
tokenizer pipeline, chat template and folder layout of a real Qwen2 checkpoint, so the inference engines
(vLLM and transformers) and every stage can run end to end on CPU in seconds.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the text of the bundled sample corpora
(``shards/sample``: WuDao, WanJuan, SkyPile and the seed pairs), split with Qwen2's pre-tokenizer regex.

    python tools/make_tiny_model.py --out models/tiny-qwen2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "shards" / "sample"

# Bump when the builder's output changes, so folders built by an older version are rebuilt.
BUILDER_VERSION = 1
FINGERPRINT_FILE = "tiny_model.json"

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

# Qwen2's pre-tokenizer split (tokenizer.json of Qwen/Qwen2-*): contractions, letter runs (a CJK run is one
# piece), single digits, punctuation runs, newlines, spaces.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2's ChatML template (system prompt optional, no default system message).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def sample_texts(sample_dir: Path = SAMPLE) -> Iterator[str]:
    """Every text of the bundled sample corpora, in a fixed order (files sorted; bad items skipped)."""
    sample_dir = Path(sample_dir)
    for path in sorted((sample_dir / "wudao").glob("*.json")):
        for obj in json.loads(path.read_text(encoding="utf-8")):
            if isinstance(obj, dict) and isinstance(obj.get("content"), str):
                yield obj["content"]
    for path in sorted((sample_dir / "wanjuan").glob("*.tar.gz")):
        with tarfile.open(path, "r:gz") as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                f = tar.extractfile(member) if member.isfile() else None
                if f is None:
                    continue
                yield from _jsonl_texts(f.read().decode("utf-8", "replace").splitlines(), "content")
    for path in sorted((sample_dir / "skypile").glob("*.jsonl")):
        yield from _jsonl_texts(path.read_text(encoding="utf-8", errors="replace").splitlines(), "text")
    for path in sorted((sample_dir / "seed").glob("*.json")):
        for obj in json.loads(path.read_text(encoding="utf-8")):
            if isinstance(obj, dict):
                yield "\n".join(str(obj.get(k) or "") for k in ("instruction", "input", "output")).strip()


def _jsonl_texts(lines: list[str], field: str) -> Iterator[str]:
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get(field), str):
            yield obj[field]


def train_tokenizer(texts: list[str], vocab_size: int = 8000):
    """A Qwen2-style byte-level BPE (``tokenizers.Tokenizer``) trained on ``texts``; deterministic."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()  # as Qwen2 (and transformers' Qwen2Tokenizer) does
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def build_tiny_model(
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    vocab_size: int = 8000,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 4096,
    initializer_range: float = 0.3,
    tie_word_embeddings: bool = False,
    sample_dir: str | os.PathLike = SAMPLE,
) -> Path:
    """Write a tiny Qwen2 model + tokenizer folder to ``out_dir`` and return its path.

    Same arguments give the same files (weights and tokenizer). head_dim = hidden_size / num_heads must be
    >= 32 for vLLM's CPU attention. The wide init and untied output head keep the random model from
    repeating its last token (as a tied 0.02 init does) and make next-token logits well separated, so
    greedy decoding is robust to float rounding and comparable across backends.
    """
    recipe = _recipe(locals())  # first: only the arguments are local yet
    if hidden_size // num_heads < 32:
        raise ValueError(f"head_dim {hidden_size // num_heads} < 32: vLLM's CPU attention needs >= 32")
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    # built beside the target and moved in whole: a concurrent reader never sees a half-written folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        args = {k: v for k, v in recipe.items() if k != "builder_version"}
        # the recipe names the sample relative to the repo; read it from there, whatever the working dir
        _build(tmp, recipe, **{**args, "sample_dir": str(Path(sample_dir).resolve())})
        for f in tmp.iterdir():
            f.chmod(0o644)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _swap_in(new: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "x")
        try:
            os.replace(new, out)
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, out)


def _build(
    out: Path,
    recipe: dict,
    *,
    seed: int,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    initializer_range: float,
    tie_word_embeddings: bool,
    sample_dir: str,
) -> None:
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    texts = [t for t in sample_texts(Path(sample_dir)) if t.strip()]
    if not texts:
        raise FileNotFoundError(f"no sample texts under {sample_dir}")
    bpe = train_tokenizer(texts, vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=max_position_embeddings,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out)
    _patch_tokenizer_config(out / "tokenizer_config.json")

    ids = {t: bpe.token_to_id(t) for t in SPECIAL_TOKENS}
    config = Qwen2Config(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[ENDOFTEXT],
        pad_token_id=ids[ENDOFTEXT],
        use_sliding_window=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config.eos_token_id = [ids[IM_END], ids[ENDOFTEXT]]
    model.generation_config.pad_token_id = ids[ENDOFTEXT]
    model.generation_config.bos_token_id = ids[ENDOFTEXT]
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    (out / FINGERPRINT_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _recipe(args: dict) -> dict:
    """What a folder was built from: the builder version and every argument but the output folder."""
    recipe = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in args.items() if k != "out_dir"}
    sample = Path(recipe["sample_dir"]).resolve()
    # inside the repo: relative, so clones and worktrees of it recognise the same model
    recipe["sample_dir"] = str(sample.relative_to(REPO) if sample.is_relative_to(REPO) else sample)
    return {"builder_version": BUILDER_VERSION, **recipe}


def ensure_tiny_model(out_dir: str | os.PathLike, seed: int = 0, **kwargs) -> Path:
    """``out_dir`` holding the tiny model built with these arguments: reused when its fingerprint matches,
    (re)built otherwise."""
    out = Path(out_dir)
    args = {"seed": seed, **kwargs}
    wanted = _recipe({**_defaults(), **args})
    try:
        have = json.loads((out / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        have = None
    if have == wanted and (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    return build_tiny_model(out, **args)


def _defaults() -> dict:
    import inspect

    sig = inspect.signature(build_tiny_model)
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def _patch_tokenizer_config(path: Path) -> None:
    """Make the folder loadable by transformers 4.x too (a GPU cluster may pin an older vLLM): 4.x knows
    ``additional_special_tokens``, the class name ``PreTrainedTokenizerFast`` and the chat template inside
    tokenizer_config.json."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    extra = cfg.pop("extra_special_tokens", None)
    if extra and "additional_special_tokens" not in cfg:
        cfg["additional_special_tokens"] = extra if isinstance(extra, list) else list(extra.values())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["padding_side"] = "left"
    # one copy of the chat template, where every transformers version and vLLM look for it
    cfg["chat_template"] = CHAT_TEMPLATE
    path.with_name("chat_template.jinja").unlink(missing_ok=True)
    path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "models" / "tiny-qwen2"), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--sample-dir", default=str(SAMPLE), help="corpora the tokenizer is trained on")
    # bigger shapes make a model whose prefill is compute-bound, like a real one (e.g. for the Point
    # prefix-caching benchmark): --hidden-size 512 --num-layers 8 --num-heads 8 --intermediate-size 1408
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--intermediate-size", type=int, default=256)
    p.add_argument("--force", action="store_true", help="rebuild even if the folder matches these arguments")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    build = build_tiny_model if args.force else ensure_tiny_model
    shape = {
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
        "num_heads": args.num_heads,
        "num_kv_heads": args.num_kv_heads,
        "intermediate_size": args.intermediate_size,
    }
    out = build(args.out, args.seed, vocab_size=args.vocab_size, sample_dir=args.sample_dir, **shape)
    print(f"tiny Qwen2 ready in {out} ({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
