# greengate: `make run` sets up and starts the gateway; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: bench-coserve bench-replicas setup browser run test fuzz lint bench bench-engine bench-replay bench-routing bench-reports bench-safety bench-cache clean bench-spec bench-vs-litellm bench-scaleout soak bench-batch-carbon

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch pinned in the same call (and by constraints): an unpinned torch pulls GBs of CUDA.
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0 -e '.[all,test]'
	rm -f $(VENV)/.installed-*
	touch $@

# The admin UI's browser tests drive Debian's Chromium (never a browser download).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Starts the mock echo upstream the example pool points at (GREENGATE_MOCK_UPSTREAM_PORT,
# default 9000: the pool file follows it), then the gateway.
run: setup
	@$(BIN)/greengate mock-upstream & MOCK=$$!; \
	trap "kill $$MOCK 2>/dev/null" EXIT INT TERM; \
	$(BIN)/greengate serve --config greengate.yaml

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The schemathesis run of `make test`, at a large budget and a random seed.
fuzz: setup
	GREENGATE_FUZZ_EXAMPLES=$${GREENGATE_FUZZ_EXAMPLES:-500} GREENGATE_FUZZ_SEED=$${GREENGATE_FUZZ_SEED:-random} \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_defects_schema_fuzz.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/overhead.py --out bench/results/overhead.json

bench-engine: setup
	$(BIN)/python bench/engine_throughput.py --out bench/results/engine_throughput.json

# Trains the benchmark's target/draft pair on first run (~30 min here), cached in .greengate/models/.
bench-spec: setup
	$(BIN)/python bench/spec_decode.py --out bench/results/spec_decode.json

bench-coserve: setup
	$(BIN)/python bench/coserve.py --out bench/results/coserve.json

bench-replicas: setup
	$(BIN)/python bench/replicas.py --out bench/results/replicas.json

bench-replay: setup
	$(BIN)/python bench/replay.py --out bench/results/replay.json

bench-routing: setup
	$(BIN)/python bench/routing_latency.py --out bench/results/routing_latency.json

bench-reports: setup
	$(BIN)/python bench/reports.py --out bench/results/reports.json

bench-safety: setup
	$(BIN)/python bench/pii_eval.py --out bench/results/pii_eval.json
	$(BIN)/python bench/safety_eval.py --out bench/results/safety_eval.json

bench-cache: setup
	$(BIN)/python bench/cache_eval.py --out bench/results/cache_eval.json --png bench/results/cache_eval.png

# greengate and the LiteLLM proxy (its own venv in .greengate/litellm-venv) on one fake provider.
bench-vs-litellm: setup
	$(BIN)/python bench/vs_litellm.py --out bench/results/vs_litellm.json

# Carbon-aware batch scheduling over a synthetic, time-compressed day (README table).
bench-batch-carbon: setup
	$(BIN)/python bench/batch_carbon.py --out bench/results/batch_carbon.json

# Replicas on PostgreSQL + Redis at 127.0.0.1 (GREENGATE_TEST_PG, GREENGATE_TEST_REDIS).
bench-scaleout: setup
	$(BIN)/python bench/scaleout.py --out bench/results/scaleout.json

MINUTES ?= 30
soak: setup
	$(BIN)/python bench/soak.py --minutes $(MINUTES) --out bench/results/soak.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
