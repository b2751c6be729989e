# syntax=docker/dockerfile:1
# Lemur Serve, GPU image: the gateway over the CUDA build of vLLM (the `gpu` extra).
#
#   docker build -t lemur-serve:gpu .
#   docker run --gpus all --shm-size 16g -p 8000:8000 -v lemur-models:/models \
#       -e LEMUR_MODEL_REPO=OpenLemur/lemur-70b-chat-v1 -e LEMUR_MODEL_DIR=/models/lemur-70b-chat-v1 \
#       -e HF_TOKEN_FILE=/run/secrets/hf_token -v "$PWD/hf_token:/run/secrets/hf_token:ro" \
#       lemur-serve:gpu serve --tensor-parallel-size 4 --load-format pt --served-model-name lemur-70b-chat
#
# The model comes from a mounted volume (LEMUR_MODEL_DIR) or is downloaded once
# at start (deploy/docker/entrypoint.sh); HF_HUB_OFFLINE=1 forbids the download.
# The CUDA runtime libraries come with the torch wheels; the host needs the
# NVIDIA driver and container toolkit. CPU image: deploy/docker/cpu.Dockerfile.
# No NVIDIA_VISIBLE_DEVICES here: `--gpus` or the device plugin sets it, and an
# init container that asks for no GPU must see none. VLLM_USE_FLASHINFER_SAMPLER=0:
# FlashInfer's sampler is compiled at start with nvcc, which this slim image lacks;
# vLLM's own top-k/top-p sampler runs instead.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lemur ./lemur
COPY server ./server
COPY kernels ./kernels
COPY training ./training
COPY loadtest ./loadtest
RUN pip install "./[gpu]"

FROM ${PYTHON_IMAGE}
# tini: PID 1 that forwards SIGTERM and reaps vLLM's worker processes.
# gcc and libc6-dev: Triton compiles its small C launcher at run time.
# (Debian's security updates move package versions; the base image tag pins the release.)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 lemur \
    && useradd --system --uid 10001 --gid lemur --home-dir /home/lemur --create-home --shell /usr/sbin/nologin lemur \
    && mkdir -p /models \
    && chown lemur:lemur /models
COPY --from=build /opt/venv /opt/venv
COPY --chmod=755 deploy/docker/entrypoint.sh /usr/local/bin/lemur-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/lemur \
    HF_HOME=/home/lemur/.cache/huggingface \
    LEMUR_CACHE=/home/lemur/.cache/lemur \
    LEMUR_MODEL_DIR=/models/model \
    LEMUR_HOST=0.0.0.0 \
    LEMUR_PORT=8000 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    VLLM_USE_FLASHINFER_SAMPLER=0
USER 10001:10001
WORKDIR /home/lemur
VOLUME ["/models"]
EXPOSE 8000
# A 70B model takes minutes to load: unhealthy only after 40 minutes of failures.
HEALTHCHECK --interval=30s --timeout=10s --start-period=40m --retries=3 CMD ["lemur-entrypoint", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "lemur-entrypoint"]
CMD ["serve"]
