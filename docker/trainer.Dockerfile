# Trainer: reads shards (local paths, http(s):// or pipe: URLs) and trains with torchrun.
#   docker run --gpus all --rm IMAGE --nproc-per-node=8 -m trainer.main --shards=... --out=/runs/a
FROM python:3.11-slim-bookworm

# curl: webdataset fetches http(s):// shards with it; ffmpeg: eval.predict reads video files.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl=7.88.* ffmpeg=7:5.1.* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/soundnet
# requirements.txt is the one source of truth for every install (see tests/test_docker.py).
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# the project itself, as a package (its dependencies are the pinned ones above)
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY runtime/ runtime/
COPY models/ models/
COPY trainer/ trainer/
COPY eval/ eval/
RUN pip install --no-cache-dir --no-deps .

# glibc's malloc keeps freed memory for the next CPU step or batch (runtime/allocator.py): set
# here, every process torchrun starts begins with it
ENV MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_ARENA_MAX=1

RUN groupadd --gid 1000 soundnet && useradd --create-home --uid 1000 --gid 1000 soundnet
USER 1000:1000
ENTRYPOINT ["torchrun"]
CMD ["--standalone", "--nproc-per-node=1", "-m", "trainer.main", "--help"]
