# Pipeline worker: Beam's Python 3.11 SDK image of the pinned Beam version, plus ffmpeg and the
# project. Use it as --sdk_container_image (Dataflow) or --environment_config (Flink/Spark
# portable runners), or run the pipeline itself as a batch job:
#   docker run --rm --entrypoint python IMAGE -m pipeline.run --runner=DirectRunner ...
FROM apache/beam_python3.11_sdk:2.77.0

# ffmpeg decodes every input; Debian bookworm's 5.1 is what the tests run against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg=7:5.1.* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/soundnet
# requirements.txt is the one source of truth for every install (see tests/test_docker.py).
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# the project itself, as a package (its dependencies are the pinned ones above)
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY runtime/ runtime/
COPY pipeline/ pipeline/
RUN pip install --no-cache-dir --no-deps .

# glibc's malloc keeps freed memory for the next teacher batch (runtime/allocator.py): set here,
# every worker process a runner starts begins with it
ENV MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_ARENA_MAX=1

RUN groupadd --gid 1000 soundnet && useradd --create-home --uid 1000 --gid 1000 soundnet
USER 1000:1000
# The SDK image's own entrypoint (/opt/apache/beam/boot) stays, so runners can start workers.
