# Two commands on a fresh machine:  `make run` (main job)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: setup run test clean

setup: $(VENV)/.installed

# Plain PyPI torch/torchvision (CUDA builds; they run on the CPU). pyproject pins
# torch>=2.14 so pip never picks the machine's CPU-only 2.13 wheel, which cannot
# load torchvision's operators.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip >/dev/null
	$(VENV)/bin/pip install -e ".[dev]"
	touch $@

# The embedded text-to-image model is pretrained once (about 15 min on 2 CPU cores).
models/galot-mini/model_index.json: | setup
	$(VENV)/bin/galot pretrain-t2i

run: setup models/galot-mini/model_index.json
	$(VENV)/bin/galot run

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf runs mlflow.db
