# Two commands on a fresh machine:  `make run` (main job)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The embedded default never needs a model hub: HF_HUB_OFFLINE guarantees nothing is fetched
# (a Stable Diffusion download needs t2i.allow_download and galot run without make). No DVC analytics.
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

# WORLD picks the embedded world `make run` uses: mnist5k (default: the fastest, ~15 min) or
# fashion (Fashion-MNIST photos, worlds/fashion/: headroom for methods to differ, slower).
WORLD ?= mnist5k

.PHONY: setup data browser run test clean

setup: $(VENV)/.installed data

# Plain PyPI torch/torchvision (CUDA builds; they run on the CPU). This machine's pip
# find-links also offer a CPU-only torch 2.13 wheel that cannot load torchvision's
# operators; TORCH_PIN keeps pip off it here, without narrowing pyproject's floors for users.
TORCH_PIN ?= torch>=2.14 torchvision>=0.29
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip >/dev/null
	$(VENV)/bin/pip install -e ".[dev]" $(foreach p,$(TORCH_PIN),"$(p)")
	touch $@

# Debian's dataset-fashion-mnist for the Fashion world (installed if missing, as root).
data:
	bash worlds/fashion/install_data.sh

# The main job: the whole DVC pipeline on the embedded default (dvc.yaml) — pretrain
# galot-mini once, GALOT for 10 cycles, the AL baselines, the transfer architectures and
# the report — then the GALOT-vs-best-baseline table. Rerunning resumes / does nothing.
# WORLD=fashion runs the same pipeline in worlds/fashion/ (its own params.yaml, models, runs).
run: setup
ifeq ($(WORLD),mnist5k)
	dvc repro
	galot report
else ifeq ($(WORLD),fashion)
	cd worlds/fashion && dvc repro && galot report
else
	$(error WORLD must be mnist5k or fashion, got '$(WORLD)')
endif

# Debian's chromium + chromium-driver for the labelling-page test (installed if missing, as root).
browser:
	bash tests/install_browser.sh

test: setup browser
	$(PY) -m pytest -q

clean:
	rm -rf runs mlflow.db mlartifacts dvc_plots worlds/*/runs worlds/*/mlflow.db worlds/*/mlartifacts worlds/*/dvc_plots
