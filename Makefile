# Two commands do all the set-up on a fresh machine: `make train` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
WORKDIR ?= runs/default

.PHONY: train test test-fast sample benchmark clean-venv

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# Trains the default config on the bundled moving-digits dataset and writes samples.
train: $(VENV)/.installed
	$(PY) train.py --config=configs/default.py --workdir=$(WORKDIR)

# Samples from the model `make train` wrote.
sample: $(VENV)/.installed
	$(PY) sample.py --workdir=$(WORKDIR) --mode=unconditional --output_dir=$(WORKDIR)/sample_out

# Ours against video-diffusion-pytorch on the CPU tiny workload (BENCHMARKS.md);
# makes the peer's own venv in benchmarks/.peer on first use.
benchmark: $(VENV)/.installed
	$(PY) benchmarks/compare_peer.py --workload=tiny

# The whole test suite (what .ci/run calls): the test files spread over two
# worker processes, each file on one worker (its module fixtures built once).
test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

# The fast tier for iteration: everything not marked slow or multiprocess.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow and not multiprocess" tests

clean-venv:
	rm -rf $(VENV)
