# dode — common tasks. `make help` lists them.
PYTHON ?= python3
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: help install test test-all lint format bench dev-deps

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-22s %s\n", $$1, $$2}'

install:  ## install dode with its dev tools (pip install -e ".[dev]")
	$(PYTHON) -m pip install -e ".[dev]"

# On a fresh machine (no pytest, or dode's dependencies missing) the test targets first install
# dode with its dev extras, as `make demo` installs what it needs. The check names every package
# the tests import (k-diffusion by its spec: its package __init__ needs pkg_resources, which the
# tests work around), so a machine set up by `make demo` gets the dev extras too.
DEV_IMPORTS := pytest, dode, torch, numpy, lightning, diffusers, transformers, sklearn, jsonargparse, wandb, \
	torch_fidelity, torchmetrics, safetensors, scipy, threadpoolctl, yaml, PIL, matplotlib
dev-deps:
	@$(PYTHON) -c "import $(DEV_IMPORTS); import importlib.util as u; \
		assert u.find_spec('k_diffusion'), 'k-diffusion'" 2>/dev/null \
		|| $(PYTHON) -m pip install -e ".[dev]"

test: dev-deps  ## run the default test suite (CPU, < 10 min; installs the dev extras if missing)
	$(PYTHON) -m pytest -q -x --durations=15

test-all: dev-deps  ## run every test, including the slow ones
	$(PYTHON) -m pytest -q -m "not gpu"

lint:  ## ruff check + format check
	$(PYTHON) -m ruff check dode tests experiments
	$(PYTHON) -m ruff format --check dode tests experiments

format:  ## apply ruff formatting and autofixes
	$(PYTHON) -m ruff check --fix dode tests experiments
	$(PYTHON) -m ruff format dode tests experiments

bench:  ## core benchmark: fit overhead vs teacher, D-solver vs base sampling time
	$(PYTHON) experiments/bench_core.py

## Paper tables ###############################################################################
# Each table target fits and evaluates every (solver, NFE, base/D) cell of one table, resumable
# cell by cell, and writes experiments/results/<table>.md and .csv (configs: configs/paper/).
# `DRY_RUN=1 make table-<name>` runs the same code on a tiny random model of the same shape on
# the CPU, with a stand-in feature extractor; its outputs go to runs/dryrun/ (never committed).
# Knobs (environment or make variables): DRY_RUN, DEVICES (GPUs per evaluation, DDP),
# NUM_SAMPLES (default 50000), DODE_REFS (folder of reference statistics, default refs/),
# DODE_INCEPTION_WEIGHTS, ONLY (cells, e.g. ddim-nfe5), KEEP_SAMPLES, WANDB=0.
# GPU hours below are estimates for one A100 (not measured here).
PAPER_TABLES := cifar10 cifar10-edm cifar10-karras bedroom256
export DRY_RUN DEVICES NUM_SAMPLES DODE_REFS DODE_INCEPTION_WEIGHTS ONLY KEEP_SAMPLES WANDB RESULTS_DIR WORK_DIR
.PHONY: tables-dry $(addprefix table-,$(PAPER_TABLES))

table-cifar10:  ## CIFAR-10 DDPM: DDIM, iPNDM, DPM-Solver-2/3, DEIS x NFE 3-10, base+D, FID@50k. GPU ~2.5 h (est.). Downloads: google/ddpm-cifar10-32 (143 MB), Inception weights (91 MB), refs/cifar10-32x32.npz (EDM fid-refs)
	$(PYTHON) experiments/tables.py cifar10

table-cifar10-edm:  ## VP model in sigma-space, Karras grid: DDIM (x0) and EDM-Heun x NFE 3-10, base+D, FID@50k. GPU ~1 h (est.). Downloads: as table-cifar10
	$(PYTHON) experiments/tables.py cifar10-edm

table-cifar10-karras:  ## peers' setting: CIFAR-10, Karras grid, DDIM/iPNDM/DPM-Solver++(2M)/UniPC/DEIS/EDM-Heun x NFE 3,4,5,6,8,10, FID@50k. GPU ~2.5 h (est.). Downloads: as table-cifar10
	$(PYTHON) experiments/tables.py cifar10-karras

table-bedroom256:  ## LSUN bedroom 256 DDPM (google/ddpm-ema-bedroom-256): table-cifar10's solvers, FID@50k. GPU ~70 h (est.; NUM_SAMPLES=10000: ~15 h). Downloads: model (455 MB), Inception weights, refs/VIRTUAL_lsun_bedroom256.npz (guided-diffusion)
	$(PYTHON) experiments/tables.py bedroom256

tables-dry:  ## DRY_RUN of every paper table on tiny random models: CPU only, no downloads, ~1-2 min
	@for t in $(PAPER_TABLES); do DRY_RUN=1 $(PYTHON) experiments/tables.py $$t || exit 1; done

## Digits #####################################################################################
# The bundled default: a DDPM trained on scikit-learn's 8x8 digits (dode/assets/digits_ddpm),
# class-conditional DDPM and rectified-flow variants (dode/assets/digits_cond_ddpm, digits_flow),
# a digits classifier for FD-digits (dode/assets/digits_classifier), their hashes (SHA256SUMS).
.PHONY: demo demo-guided demo-flow table-digits pretrain-digits pretrain-digits-cond pretrain-digits-flow check-digits-assets

demo:  ## D-ODE on the bundled digits model: 6 solvers x NFE 3-10, judged on 10,000 held-out seeds (CPU); writes experiments/results/digits/
	@$(PYTHON) -c "import dode, lightning, diffusers, wandb, sklearn, matplotlib, jsonargparse" 2>/dev/null \
		|| $(PYTHON) -m pip install -e .
	$(PYTHON) experiments/digits_demo.py -c configs/demo/digits.yaml

table-digits: demo  ## same as demo

demo-guided:  ## D-ODE with classifier-free guidance on the class-conditional digits DDPM: DDIM, DPM-Solver++(2M), UniPC x NFE 3-10 x guidance 1, 2, 4, FD-digits + class accuracy (CPU); writes experiments/results/digits-guided/
	@$(PYTHON) -c "import dode, diffusers, sklearn, matplotlib, jsonargparse" 2>/dev/null \
		|| $(PYTHON) -m pip install -e .
	$(PYTHON) experiments/digits_guided_demo.py -c configs/demo/digits-guided.yaml

demo-flow:  ## D-ODE on the class-conditional rectified-flow digits model: Euler, DPM-Solver++(2M), UniPC x NFE 3-10, FD-digits + class accuracy (CPU); writes experiments/results/digits-flow/
	@$(PYTHON) -c "import dode, diffusers, sklearn, matplotlib, jsonargparse" 2>/dev/null \
		|| $(PYTHON) -m pip install -e .
	$(PYTHON) experiments/digits_flow_demo.py -c configs/demo/digits-flow.yaml

pretrain-digits:  ## retrain the bundled digits DDPM and classifier (CPU, seed 0) and rewrite dode/assets/SHA256SUMS
	$(PYTHON) -m dode.pretrain -c configs/pretrain/digits.yaml
	$(PYTHON) -m dode.digits --output dode/assets/digits_classifier
	$(PYTHON) -c "from dode.digits import write_asset_hashes; print(write_asset_hashes())"

pretrain-digits-cond:  ## retrain the bundled class-conditional digits DDPM (label dropout for CFG; CPU, seed 0) and rewrite dode/assets/SHA256SUMS
	$(PYTHON) -m dode.pretrain -c configs/pretrain/digits-cond.yaml
	$(PYTHON) -c "from dode.digits import write_asset_hashes; print(write_asset_hashes())"

pretrain-digits-flow:  ## retrain the bundled class-conditional rectified-flow digits model (CPU, seed 0) and rewrite dode/assets/SHA256SUMS
	$(PYTHON) -m dode.pretrain -c configs/pretrain/digits-flow.yaml
	$(PYTHON) -c "from dode.digits import write_asset_hashes; print(write_asset_hashes())"

check-digits-assets:  ## check the shipped digits model and classifier against dode/assets/SHA256SUMS
	cd dode/assets && sha256sum -c SHA256SUMS

## Lightning ##################################################################################
# python -m dode.train (LightningCLI, W&B offline unless WANDB_API_KEY is set) and dode.sample.
TRAIN_ARGS ?=
SOLVER_FILE ?= runs/digits-ddim-nfe5-lstsq/solver.safetensors
SAMPLE_SEEDS ?= 0-63
SAMPLE_OUT ?= samples
.PHONY: train train-tiny sample bench-train

train:  ## fit D-ODE λ: configs/default.yaml (bundled digits DDPM, DDIM, NFE 5); TRAIN_ARGS="--model.nfe 8" adds options
	$(PYTHON) -m dode.train -c configs/default.yaml $(TRAIN_ARGS)

train-tiny:  ## CPU smoke fit in about a minute (exact GMM digits model, DDIM NFE 4, pixel FD); writes runs/gmm-digits-ddim-nfe4-lstsq/
	$(PYTHON) -m dode.train -c configs/tiny.yaml $(TRAIN_ARGS)

sample:  ## PNGs + samples.npz from a fitted solver: make sample SOLVER_FILE=runs/.../solver.safetensors SAMPLE_SEEDS=0-63 SAMPLE_OUT=samples
	$(PYTHON) -m dode.sample --solver_file $(SOLVER_FILE) --seeds $(SAMPLE_SEEDS) --out $(SAMPLE_OUT)

bench-train:  ## wall time of python -m dode.train vs a direct dode.fit_lambdas call on the same work, with the breakdown
	$(PYTHON) -m dode.bench --repeat 2

.PHONY: demo-frontier demo-frontier-guided demo-frontier-flow demo-frontier-slow
# Fidelity first (issue 18): per NFE 3-10 the best learning-free (solver, grid) cell by MSE to a
# converged reference (chosen on selection seeds) vs a learned sampler warm-started there (fit
# seeds), judged on held-out seeds with bootstrap intervals, FD-digits second. Default seed
# counts keep each target under 5 minutes on 2 cores; FIDELITY_ARGS=--slow uses the issue's
# counts (5,000 held-out seeds; what the committed files were made with, see their comments).
# The older FD-based frontier (frontier.csv) is `python experiments/digits_frontier.py [--model M]`.
FIDELITY_ARGS ?=
demo-frontier:  ## fidelity frontier on the digits DDPM: best learning-free cell vs learned per NFE 3-10, MSE to the converged reference + FD-digits (CPU); writes experiments/results/digits/fidelity.csv, fidelity.png
	$(PYTHON) experiments/digits_fidelity.py --model digits $(FIDELITY_ARGS)

demo-frontier-guided:  ## the same on digits-cond at CFG 2 (labels seed mod 10); writes experiments/results/digits-guided/fidelity.csv, fidelity.png
	$(PYTHON) experiments/digits_fidelity.py --model digits-cond $(FIDELITY_ARGS)

demo-frontier-flow:  ## the same on the digits-flow rectified flow; writes experiments/results/digits-flow/fidelity.csv, fidelity.png
	$(PYTHON) experiments/digits_fidelity.py --model digits-flow $(FIDELITY_ARGS)

demo-frontier-slow:  ## all three with the issue's seed counts (--slow: 5,000 held-out seeds, ablation at NFE 4/5, ingredients chosen at NFE 4); CPU, about 50-60 minutes with the three in parallel on 2 cores
	$(MAKE) demo-frontier demo-frontier-guided demo-frontier-flow FIDELITY_ARGS=--slow
