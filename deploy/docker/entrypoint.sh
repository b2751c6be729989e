#!/bin/sh
# Entrypoint of the Lemur Serve images (POSIX sh; tini runs it as PID 1's child).
#
#   serve [lemur serve flags]  get the model if needed, then exec `lemur serve` (the default;
#                              arguments that start with "-" are serve flags too)
#   fetch                      only get the model (the Kubernetes init container)
#   healthcheck                GET /health on the local server (the Docker HEALTHCHECK)
#   anything else              run as given, e.g. `lemur plan --gpu h100` or `sh`
#
# The model lives in LEMUR_MODEL_DIR: a mounted volume, a directory baked into
# the image, or, when it has no config.json and LEMUR_MODEL_REPO is set, a
# download from the Hugging Face Hub through huggingface-hub's `hf download`
# (LEMUR_MODEL_REVISION pins a revision). The token comes from HF_TOKEN or the
# file HF_TOKEN_FILE (default /run/secrets/hf_token, a Docker or Kubernetes
# secret) and is never printed. HF_HUB_OFFLINE=1 never downloads: the model
# must already be there. A finished download leaves a marker file, so a pod
# killed half way through resumes the download instead of serving half a model.
set -eu

MODEL_DIR="${LEMUR_MODEL_DIR:-/models/model}"
MARKER=".lemur-download-complete"

log() {
    printf 'lemur-entrypoint: %s\n' "$*" >&2
}

is_offline() {
    case "${HF_HUB_OFFLINE:-0}" in
        1 | true | TRUE | True | yes | YES | on | ON) return 0 ;;
        *) return 1 ;;
    esac
}

load_token() {
    token_file="${HF_TOKEN_FILE:-/run/secrets/hf_token}"
    if [ -z "${HF_TOKEN:-}" ] && [ -r "$token_file" ]; then
        HF_TOKEN="$(tr -d '\r\n' <"$token_file")"
        if [ -n "$HF_TOKEN" ]; then
            export HF_TOKEN
        else
            unset HF_TOKEN  # an empty secret: public repositories need none
        fi
    fi
}

fetch_model() {
    # The marker names what was downloaded: a new LEMUR_MODEL_REVISION downloads again.
    wanted="${LEMUR_MODEL_REPO:-}@${LEMUR_MODEL_REVISION:-main}"
    if [ -f "$MODEL_DIR/config.json" ]; then
        if [ -z "${LEMUR_MODEL_REPO:-}" ]; then
            log "model found in $MODEL_DIR"
            return 0
        fi
        if [ -f "$MODEL_DIR/$MARKER" ] && [ "$(cat "$MODEL_DIR/$MARKER")" = "$wanted" ]; then
            log "model found in $MODEL_DIR ($wanted)"
            return 0
        fi
    fi
    if [ -z "${LEMUR_MODEL_REPO:-}" ]; then
        log "no model in $MODEL_DIR (no config.json): mount one there, or set LEMUR_MODEL_REPO to download one"
        return 1
    fi
    if is_offline; then
        log "HF_HUB_OFFLINE is set and $MODEL_DIR holds no complete download of $wanted"
        return 1
    fi
    # Most ReadWriteMany volumes ignore fsGroup: say so plainly instead of failing inside hf.
    if ! mkdir -p "$MODEL_DIR" 2>/dev/null || [ ! -w "$MODEL_DIR" ]; then
        log "cannot write $MODEL_DIR as uid $(id -u): the model volume must be writable by this user" \
            "(deploy/README.md, Model storage)"
        return 1
    fi
    load_token
    log "downloading $wanted into $MODEL_DIR (resumes a partial download)"
    rm -f "$MODEL_DIR/$MARKER"
    set -- download "$LEMUR_MODEL_REPO" --local-dir "$MODEL_DIR"
    if [ -n "${LEMUR_MODEL_REVISION:-}" ]; then
        set -- "$@" --revision "$LEMUR_MODEL_REVISION"
    fi
    if ! hf "$@"; then
        log "download of $wanted failed; the next start resumes it"
        return 1
    fi
    if [ ! -f "$MODEL_DIR/config.json" ]; then
        log "$LEMUR_MODEL_REPO has no config.json: not a model for lemur serve"
        return 1
    fi
    printf '%s\n' "$wanted" >"$MODEL_DIR/$MARKER"
    log "download complete"
}

command="${1:-serve}"
case "$command" in
    -*) command=serve ;;
    *) [ "$#" -eq 0 ] || shift ;;
esac

case "$command" in
    serve)
        fetch_model
        exec lemur serve "$MODEL_DIR" --host "${LEMUR_HOST:-0.0.0.0}" --port "${LEMUR_PORT:-8000}" "$@"
        ;;
    fetch)
        fetch_model
        ;;
    healthcheck)
        exec python3 -c 'import os, urllib.request
port = os.environ.get("LEMUR_PORT", "8000")
urllib.request.urlopen("http://127.0.0.1:" + port + "/health", timeout=5)'
        ;;
    *)
        exec "$command" "$@"
        ;;
esac
