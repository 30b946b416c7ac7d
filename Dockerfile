# emostream: one image for every stage; the command picks the stage (`python -m capture|detector|classifier|sink`).
#
#   CPU (default):  docker build -t emostream:cpu .
#   CUDA:           docker build --build-arg VARIANT=cu128 -t emostream:cu128 .
#
# VARIANT names a PyTorch wheel index (https://download.pytorch.org/whl/<VARIANT>): `cpu`, or a CUDA
# tag that index serves for torch 2.13.0 (cu126, cu128, ...). The CUDA wheels carry their own CUDA
# runtime, so the same slim Python base serves both; the host only needs the NVIDIA driver and the
# NVIDIA Container Toolkit (`docker run --gpus all`, compose device reservations, k8s nvidia.com/gpu).
# BASE_IMAGE can point at another Debian-based image with Python 3.11+ (tomllib) as `python` on PATH.
#
# No HEALTHCHECK here: compose and Kubernetes probe each stage's /healthz and /readyz on its metrics
# port themselves, with the port that stage was given on its command line.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG VARIANT=cpu
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# No apt packages: every wheel (torch, opencv-python-headless, av/aiortc, matplotlib) bundles its native
# libraries and needs only libc, libstdc++, libgcc_s and zlib, which the slim Debian base has.

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so editing the code does not reinstall torch.
# CPU: constraints.txt pins torch==2.13.0+cpu, which only the CPU index serves -- pip fails loudly
# rather than pull gigabytes of CUDA wheels. CUDA: no constraints file (it would demand +cpu); the
# cu index's torch 2.13.0+<VARIANT> wins over PyPI's 2.13.0 because a local version sorts higher.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && if [ "$VARIANT" = "cpu" ]; then \
        pip install -r /tmp/requirements.txt -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu; \
    else \
        pip install -r /tmp/requirements.txt --extra-index-url "https://download.pytorch.org/whl/${VARIANT}"; \
    fi \
    && rm /tmp/requirements.txt

# The packages themselves (the shipped model travels as package data of `classifier`).
COPY README.md ./
COPY emostream ./emostream
COPY capture ./capture
COPY detector ./detector
COPY classifier ./classifier
COPY sink ./sink
COPY deploy ./deploy
COPY training ./training
RUN pip install --no-deps . && rm -rf /src/build

# A fixed non-root uid so Kubernetes' runAsNonRoot can verify it and volumes can be chowned to it.
# /data is where the sink writes its JSON Lines; a named volume mounted there inherits this owner.
RUN groupadd --system --gid 10001 emostream \
    && useradd --system --uid 10001 --gid emostream --home-dir /home/emostream --create-home emostream \
    && mkdir -p /data \
    && chown emostream:emostream /data
USER 10001:10001
# Run from the home directory, not /src: `python -m capture` then imports the installed package,
# exactly what was built, and matplotlib's cache has a writable home.
WORKDIR /home/emostream

# ZeroMQ: classifier faces 5550, sink events in 5551, public event stream 5560, cameras 5600+.
# Prometheus /metrics + /healthz + /readyz: sink 9101, classifier 9102, detectors 9110, cameras 9200+.
EXPOSE 5550 5551 5560 5600 9101 9102 9110 9200

# Default: the whole embedded demo in one container (one process per stage, supervised). Compose and
# Kubernetes run one stage per container instead by giving the command, e.g. `python -m sink ...`.
CMD ["python", "-m", "deploy", "run"]
