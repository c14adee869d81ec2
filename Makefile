# mkviz: `make demo` runs the main job, `make test` runs the tests; both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install data chromium demo test test-fast lab book bench-params gpu-checks checkpoints repro repro-kernel repro-dense repro-small sync-notebooks clean

install: $(STAMP) data

# the dev extra: notebooks, tests, docs and hf (Hugging Face transformers, for tests/test_hf.py)
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: install
	$(BIN)/mkviz demo

# the tests, then every notebook executed by nbmake in small mode (MKVIZ_SMALL=1)
test: install chromium
	MKVIZ_SMALL=1 $(BIN)/python -m pytest tests notebooks --nbmake --nbmake-timeout=600 $(PYTEST_ARGS)

# while developing: the tests not marked slow, without the notebooks (`make test` runs everything)
test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -m "not slow" $(PYTEST_ARGS)

# after editing a notebook's .py (or .ipynb) source: make the pair agree again
sync-notebooks: install
	$(BIN)/jupytext --sync notebooks/*.py

# Fashion-MNIST from Debian's package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), installed through
# the package manager when possible; otherwise the tests that need it skip and say why (`mkviz train --dataset
# fashion-mnist --data-root DIR --download` fetches it with torchvision instead).
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
data:
	@test -f $(FASHION_MNIST) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	      || echo "mkviz: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	  else echo "mkviz: Fashion-MNIST not found and cannot be installed here (apt-get install dataset-fashion-mnist);" \
	    "its tests will be skipped"; fi; }

# Browser tests drive Debian's chromium with Playwright (never `playwright install`: it downloads).
# Installed through the package manager when possible; otherwise those tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "mkviz: could not install chromium; browser tests will be skipped"; \
	  else echo "mkviz: chromium not found and cannot be installed here; browser tests will be skipped"; fi; }

lab: install
	$(BIN)/jupyter lab notebooks/

# the course as a static site in build/book/html (notebooks executed at the small scale; opens offline from disk).
# BOOK_ARGS="--full" executes them at the default scale; see docs/instructors.md
BOOK_ARGS ?=
book: install data
	OMP_NUM_THREADS=1 $(BIN)/python -m mkviz.book $(BOOK_ARGS)

# train the missing shipped Fashion-MNIST checkpoints into data/checkpoints/fashion-mnist (CPU, resumable;
# data/README.md gives the time); DATASET=shapes for the shapes ones, NAMES="kua-8 ..." for some of them
DATASET ?= fashion-mnist
NAMES ?=
checkpoints: install
	$(BIN)/python -m mkviz.shipped --dataset $(DATASET) $(NAMES)

# the Fashion-MNIST reproduction behind docs/reproduction_fmnist.md and docs/chart_specialisation.md:
# the learning-rate check, then the study (about 3 hours on 2 cores in all; resumable: run it again after a stop)
repro: install
	$(BIN)/mkviz sweep configs/fmnist_lr.yaml
	$(BIN)/mkviz sweep configs/repro_fmnist.yaml

# study v3 (docs/kernel_size_fmnist.md: is the kernel-size-3 lead from the charts?), then KUA's chart usage
# (docs/kua_usage_fmnist.md); about 2 hours on 2 cores; resumable: run it again after a stop
repro-kernel: install
	$(BIN)/mkviz sweep configs/kernel_fmnist.yaml
	$(BIN)/mkviz sweep configs/kua_usage_fmnist.yaml

# the dense study on Fashion-MNIST scenes (docs/dense_fmnist.md: segmentation mIoU and detection box mAP, baseline
# against VanillaK-8 and KUA-8; about 90 minutes on 2 cores; resumable: run it again after a stop)
repro-dense: install
	$(BIN)/mkviz sweep configs/dense_fmnist.yaml

# the first, superseded study on shapes and digits (docs/reproduction.md; about 40 minutes)
repro-small: install
	$(BIN)/mkviz sweep configs/repro_small.yaml

# the GPU checks (benchmark, notebook 03 at GPU scale, the GPU study) within a deadline (docs/gpu_runs.md)
gpu-checks: install
	OUT=$(or $(OUT),outputs/gpu_checks) DEADLINE=$(or $(DEADLINE),480) PY=$(BIN)/python bash scripts/gpu_checks.sh

bench-params: install
	$(BIN)/python -m mkviz.bench params

clean:
	rm -rf $(VENV) outputs build .pytest_cache
