"""The closed sets of string values of the config, as enums OmegaConf checks at load.

A member is a ``str`` (:class:`enum.StrEnum`) named as its value: it compares equal to, hashes, formats and
repr()s as the plain string, and OmegaConf writes it by that name (``to_yaml``; ``to_container`` with
``enum_to_str=True``). So ``cfg.executor.kind == "slurm"``, f-strings, dict lookups and JSON values see the
same text as when the values were plain strings, and a wrong value is refused at load with its key and the
valid values. (orjson refuses a member as a dict key: use ``str(member)`` there.) The tuples below are the
values as plain strings, for messages, ``argparse`` choices and the docs.
"""

from __future__ import annotations

from enum import StrEnum


class Choice(StrEnum):
    """A config choice; repr() as the plain string, so lists and messages read as they did as strings."""

    def __repr__(self) -> str:
        return repr(self.value)


def values(choice: type[Choice]) -> tuple[str, ...]:
    """The values of ``choice`` as plain strings, in definition order."""
    return tuple(m.value for m in choice)


class ExecutorKind(Choice):
    local = "local"
    slurm = "slurm"
    inline = "inline"


class CorpusFormat(Choice):
    wudao = "wudao"
    wanjuan = "wanjuan"
    skypile = "skypile"
    jsonl = "jsonl"


class Backend(Choice):
    vllm = "vllm"
    transformers = "transformers"


class Dtype(Choice):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class PerplexityScorer(Choice):
    none = "none"
    lm = "lm"
    kenlm = "kenlm"


class PerplexityThresholds(Choice):
    absolute = "absolute"
    percentile = "percentile"


class PerplexityBucket(Choice):
    head = "head"
    middle = "middle"
    tail = "tail"


class PointMode(Choice):
    reference = "reference"
    calibrated = "calibrated"


class TrainTask(Choice):
    label = "label"
    chat = "chat"


class TrainDistributed(Choice):
    ddp = "ddp"  # one process: plain; more: DistributedDataParallel
    fsdp = "fsdp"  # an accelerate config file with distributed_type FSDP
    deepspeed = "deepspeed"  # an accelerate config file with distributed_type DEEPSPEED


class SeedFormat(Choice):
    """How a seed file is read (kun_hpc/train/seed.py): auto by suffix, else by what the file holds."""

    auto = "auto"
    json = "json"  # one JSON array of items
    jsonl = "jsonl"  # JSON Lines, one item a line


class SeedColumn(Choice):
    """The keys of ``train.seed_columns``: LLaMA-Factory's ``columns`` names (its data/README.md)."""

    prompt = "prompt"  # the instruction (Alpaca: instruction)
    query = "query"  # the input joined to it (Alpaca: input)
    response = "response"  # the output (Alpaca: output)
    history = "history"  # earlier [instruction, output] turns (Alpaca: history)
    system = "system"  # the system message (system)
    messages = "messages"  # a conversation (ShareGPT: conversations, OpenAI: messages)


class DedupKey(Choice):
    text = "text"
    instruction = "instruction"
    pair = "pair"


class SurvivorKey(Choice):
    score = "score"
    length = "length"
    id = "id"


EXECUTORS = values(ExecutorKind)
CORPUS_FORMATS = values(CorpusFormat)
BACKENDS = values(Backend)
DTYPES = values(Dtype)
TRAIN_DTYPES = DTYPES
SCORERS = values(PerplexityScorer)
THRESHOLDS = values(PerplexityThresholds)
BUCKETS = values(PerplexityBucket)
POINT_MODES = values(PointMode)
TRAIN_TASKS = values(TrainTask)
TRAIN_DISTRIBUTED = values(TrainDistributed)
SEED_FORMATS = values(SeedFormat)
SEED_COLUMNS = values(SeedColumn)
DEDUP_KEYS = values(DedupKey)
SURVIVOR_KEYS = values(SurvivorKey)
CHOICES: tuple[type[Choice], ...] = (
    ExecutorKind, CorpusFormat, Backend, Dtype, PerplexityScorer, PerplexityThresholds, PerplexityBucket,
    PointMode, TrainTask, TrainDistributed, SeedFormat, SeedColumn, DedupKey, SurvivorKey,
)  # fmt: skip
