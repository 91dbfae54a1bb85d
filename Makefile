# Every target bootstraps .venv from nothing: `make test` on a fresh machine is the whole set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE
PYTEST_ARGS ?=

.PHONY: venv test lint typecheck unit bench models clean serve protos archives lint-deploy images \
	browser segmenter-dr

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[onnx,openvino,dev,torchserve]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check sepvit handlers service tests bench scripts
	$(VENV)/bin/ruff format --check sepvit handlers service tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Debian's chromium for the demo page's browser test (Playwright drives it; its own browser
# download cannot work here). Installed once with apt-get when run as root (CI); a no-op after.
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		>/dev/null; } || echo "note: no /usr/bin/chromium (apt-get install chromium): the \
		browser test will skip, or fail under CI=true"

unit: $(STAMP) browser
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(if $(SLOW),,-m "not slow") $(PYTEST_ARGS)

test: lint typecheck lint-deploy unit

# Dockerfiles (hadolint), YAML (yamllint), the Helm chart (lint --strict; template with default,
# cpu, gpu and ci/ values) and the kustomize overlays, all rendered manifests validated by
# kubernetes-validate --strict. helm and kubectl are fetched once into .cache/ (k8s/tools.sh).
lint-deploy: $(STAMP)
	VENV=$(VENV) bash k8s/lint.sh

# Container images (needs a Docker engine; build args in docs/deploy.md, e.g.
# DOCKER_ARGS="--build-arg PIP_EXTRA_INDEX_URL=...")
VERSION := 0.1.0
images:
	docker build -f docker/gateway.Dockerfile -t sepvit-gateway:$(VERSION) $(DOCKER_ARGS) .
	docker build -f docker/torchserve.Dockerfile -t sepvit-torchserve:$(VERSION) $(DOCKER_ARGS) .
	docker build -f docker/torchserve.Dockerfile --build-arg FLAVOUR=gpu \
		-t sepvit-torchserve:$(VERSION)-gpu $(DOCKER_ARGS) .

# The gateway on 127.0.0.1:8000 (HTTP) and :8001 (gRPC), embedded backend, the demo models of
# model_store/. Settings: SEPVIT_* variables or ARGS="--config gateway.yaml" (see README).
serve: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/sepvit-serve --host 127.0.0.1 --port 8000 $(ARGS)

# Regenerate the committed OIP v2 gRPC stubs (service/oip/) from proto/grpc_service.proto.
protos: $(STAMP)
	PY=$(PY) bash proto/generate.sh

# Benchmarks (about 70 min on 2 cores; run on a quiet machine): model throughput matrix, serving
# load (embedded vs TorchServe, batching on/off, detect/segment), serving CPU overhead, the fast
# CPU runtimes (bf16/int8/auto), then docs/performance.md + plots. Every JSON records its host.
bench: $(STAMP)
	$(PY) bench/model_throughput.py
	$(PY) bench/serving_load.py
	$(PY) bench/serving_overhead.py
	$(PY) bench/model_throughput.py --variants sepvit_tiny sepvit_lite --batches 8 --threads 2 \
		--runtimes eager auto auto-nobf16 bf16 bf16-torch int8 int8-static onnxruntime \
		--output bench/results/cpu_runtimes.json
	$(PY) bench/report.py

# Demo models on SepViT-Shapes (sepvit_lite). Each step resumes from runs/<name>/state.pt, so an
# interrupted `make models` continues where it stopped. Two single-thread runs share the two
# cores (about 3 hours in all). Recipe, timings and results: docs/shapes.md.
RUNS := runs
TRAIN := $(VENV)/bin/sepvit-train --threads 1 --log-every 50 --save-every 100
CLS := --task classify --img-size 64 --batch-size 32 --steps 12000 --lr 5e-4 \
	--warmup-steps 100 --curriculum-steps 8000 --val-images 300
CLS_MID := $(RUNS)/cls64_mid.safetensors
# the demo detector's head as it was trained (conv biases beside GN, ReLU before the extra pyramid
# convs, anchors at cell centres): the heads' defaults have since become mmdet's
DET_ARGS := "fpn_channels": 96, "head_channels": 96, "head_convs": 2, "head_norm": "gn", \
	"head_conv_bias": true, "relu_before_extra_convs": true, "anchor_center_offset": 0.5
DET_MODEL := --task detect --img-size 128 --batch-size 16 --val-images 100 \
	--model-args '{$(DET_ARGS)}'
# head_norm gn: the demo segmenter's scale heads (mmseg's default, and the heads', is bn)
SEG_MODEL := --task segment --img-size 128 --batch-size 16 --val-images 100 \
	--model-args '{"fpn_channels": 64, "head_channels": 64, "head_norm": "gn"}'
# phase 1: from the classifier's backbone with the curriculum; phase 2: the whole phase-1 model
# continues at full difficulty on scenes it has not seen (--first-image)
DET := $(DET_MODEL) --steps 2000 --lr 3e-4 --warmup-steps 50 --curriculum-steps 1200
SEG := $(SEG_MODEL) --steps 1500 --lr 3e-4 --warmup-steps 50 --curriculum-steps 1000
DET2 := $(DET_MODEL) --steps 4000 --lr 2e-4 --warmup-steps 100 --first-image 32000
SEG2 := $(SEG_MODEL) --steps 4000 --lr 2e-4 --warmup-steps 100 --first-image 24000
# the classifier then grows to 112 and 224 (each phase the whole previous model, unseen scenes);
# the segmenter gets a third phase
CLS2 := --task classify --img-size 112 --batch-size 32 --steps 2000 --lr 3e-4 --warmup-steps 100 \
	--val-images 300 --first-image 384000
CLS3 := --task classify --img-size 224 --batch-size 32 --steps 600 --lr 1e-4 --warmup-steps 30 \
	--val-images 300 --first-image 448000
CLS4 := --task classify --img-size 224 --batch-size 32 --steps 700 --lr 8e-5 --warmup-steps 20 \
	--val-images 300 --first-image 467200
SEG3 := $(SEG_MODEL) --steps 4500 --lr 1.5e-4 --warmup-steps 100 --first-image 88000
# issue 18: each finished model is fine-tuned on domain-randomised scenes (--style 2, 20 % of
# them style 1), centring its input on the background colour (center_input); one run at a time
DR := --style 2 --replay 0.2 --save-every 25
CLS_DR := --task classify --img-size 224 --batch-size 16 --steps 500 --lr 1.2e-4 --warmup-steps 20 \
	--val-images 200 $(DR) --model-args '{"center_input": true}'
# the detector is centred without training (--steps 0: the shipped weights, center_input on)
CLS_DR2 := --task classify --img-size 224 --batch-size 16 --steps 400 --lr 8e-5 --warmup-steps 10 \
	--val-images 200 --style 2 --replay 0.3 --save-every 25 --first-image 8000 \
	--model-args '{"center_input": true}'
# a longer third phase on unseen scenes (its style-2 validation still rose: 0.660, 0.695, 0.785)
CLS_DR3 := --task classify --img-size 224 --batch-size 16 --steps 1500 --lr 8e-5 --warmup-steps 10 \
	--val-images 200 --style 2 --replay 0.3 --save-every 25 --first-image 14400 \
	--model-args '{"center_input": true}'
# issue 18, eighth session: style 3 (style 2 plus thin outlines, hatch fills, text, lines in front)
# from cls224_dr3; scenes from index 0 of style 3, which no earlier phase drew
CLS_S3 := --task classify --img-size 224 --batch-size 16 --steps 2000 --lr 1e-4 --warmup-steps 20 \
	--val-images 200 --style 3 --replay 0.3 --save-every 25 --model-args '{"center_input": true}'
# and a second style-3 phase on unseen scenes, with less replay (the own split had room)
CLS_S3B := $(CLS_S3) --steps 2500 --lr 8e-5 --replay 0.15 --first-image 32000
DET_DR := --task detect --img-size 128 --batch-size 16 --steps 0 --val-images 100 $(DR) \
	--model-args '{$(DET_ARGS), "center_input": true}'
# the segmenter's fine-tunes (make segmenter-dr, part of make models): three on style 2, then three
# on style 3 (eighth session); the last is shipped (docs/shapes.md)
SEG_DR_ARGS := --task segment --img-size 128 --batch-size 16 --lr 1e-4 --warmup-steps 20 \
	--val-images 100 --model-args '{"fpn_channels": 64, "head_channels": 64, "head_norm": "gn", \
	"center_input": true}'
SEG_DR := $(SEG_DR_ARGS) $(DR) --steps 300
SEG_DR2 := $(SEG_DR_ARGS) --style 2 --replay 0.4 --save-every 25 --steps 900 --first-image 4800
# third: lower lr (later flags win), more replay; still short of both targets (docs/shapes.md)
SEG_DR3 := $(SEG_DR_ARGS) --style 2 --replay 0.5 --save-every 25 --steps 1000 --lr 6e-5 \
	--warmup-steps 10 --first-image 19200
SEG_S3 := $(SEG_DR_ARGS) --style 3 --replay 0.5 --save-every 25 --steps 1200 --lr 8e-5 \
	--warmup-steps 10
SEG_S3B := $(SEG_DR_ARGS) --style 3 --replay 0.4 --save-every 25 --steps 1500 --warmup-steps 10 \
	--first-image 20000
SEG_S3C := $(SEG_DR_ARGS) --style 3 --replay 0.3 --save-every 25 --steps 1400 --warmup-steps 10 \
	--first-image 45000
# issue 16: the instance segmenter (Mask R-CNN, mmdet's train config with 128 RoIs per image and
# anchors of 4 strides for the small objects) from the shipped detector's backbone and pyramid.
# The shipped weights are the run's state at step INST_STOP (fp16 export); running the same
# command without --stop-after finishes the 900 steps (docs/shapes.md)
INST := --task detect --head mask_rcnn --img-size 128 --batch-size 8 --val-images 100 \
	--steps 900 --lr 2e-4 --warmup-steps 50 --first-image 96000 --save-every 25 \
	--model-args '{"fpn_channels": 96, "fc_channels": 256, "anchor_scale": 4.0, "roi_batch": 128, \
	"rpn_train_nms_pre": 1000, "center_input": true}'
INST_STOP := 600
DEMOS := cls:cls224_s3b det:det128_dr seg:seg128_s3c inst:inst128_s$(INST_STOP)

models: $(STAMP)
	# the classifier trains at 64x64 with the easy-to-full curriculum; the detector starts from its
	# step-8500 backbone while it finishes, the segmenter from the finished classifier
	$(TRAIN) $(CLS) --output $(RUNS)/cls64 --stop-after 8500
	$(PY) -m sepvit.cli.train_state --state $(RUNS)/cls64/state.pt --output $(CLS_MID)
	$(TRAIN) $(CLS) --output $(RUNS)/cls64 & pid=$$!; \
	  $(TRAIN) $(DET) --init-from $(CLS_MID) --output $(RUNS)/det128; rc=$$?; \
	  wait $$pid && test $$rc = 0
	$(TRAIN) $(CLS2) --init-from $(RUNS)/cls64/model.safetensors --output $(RUNS)/cls112 & \
	  pid=$$!; $(TRAIN) $(SEG) --init-from $(RUNS)/cls64/model.safetensors \
	  --output $(RUNS)/seg128; rc=$$?; wait $$pid && test $$rc = 0
	$(TRAIN) $(DET2) --init-from $(RUNS)/det128/model.safetensors --output $(RUNS)/det128_full & \
	  pid=$$!; $(TRAIN) $(SEG2) --init-from $(RUNS)/seg128/model.safetensors \
	  --output $(RUNS)/seg128_full; rc=$$?; wait $$pid && test $$rc = 0
	{ $(TRAIN) $(CLS3) --init-from $(RUNS)/cls112/model.safetensors --output $(RUNS)/cls224 && \
	  $(TRAIN) $(CLS4) --init-from $(RUNS)/cls224/model.safetensors --output $(RUNS)/cls224b; } & \
	  pid=$$!; $(TRAIN) $(SEG3) --init-from $(RUNS)/seg128_full/model.safetensors \
	  --output $(RUNS)/seg128_p3; rc=$$?; wait $$pid && test $$rc = 0
	$(TRAIN) $(CLS_DR) --init-from $(RUNS)/cls224b/model.safetensors --output $(RUNS)/cls224_dr
	$(TRAIN) $(CLS_DR2) --init-from $(RUNS)/cls224_dr/model.safetensors --output $(RUNS)/cls224_dr2
	$(TRAIN) $(CLS_DR3) --init-from $(RUNS)/cls224_dr2/model.safetensors --output $(RUNS)/cls224_dr3
	$(TRAIN) $(CLS_S3) --init-from $(RUNS)/cls224_dr3/model.safetensors --output $(RUNS)/cls224_s3
	$(TRAIN) $(CLS_S3B) --init-from $(RUNS)/cls224_s3/model.safetensors --output $(RUNS)/cls224_s3b
	$(TRAIN) $(DET_DR) --init-from $(RUNS)/det128_full/model.safetensors --output $(RUNS)/det128_dr
	$(TRAIN) $(INST) --init-from $(RUNS)/det128_dr/model.safetensors --output $(RUNS)/inst128 \
	  --stop-after $(INST_STOP)
	$(MAKE) segmenter-dr
	mkdir -p $(RUNS)/inst128_s$(INST_STOP)
	$(PY) -m sepvit.cli.train_state --half --state $(RUNS)/inst128/state.pt \
	  --output $(RUNS)/inst128_s$(INST_STOP)/model.safetensors
	for pair in $(DEMOS); do \
	  m=sepvit_lite_shapes_$${pair%%:*}; run=$${pair##*:}; \
	  cp $(RUNS)/$$run/model.safetensors model_store/$$m/model.safetensors && \
	  chmod 644 model_store/$$m/model.safetensors && \
	  $(VENV)/bin/sepvit-eval --checkpoint model_store/$$m/model.safetensors --split test \
	    --num-images 500 --json model_store/$$m/eval_test.json && \
	  $(VENV)/bin/sepvit-eval --checkpoint model_store/$$m/model.safetensors --split independent \
	    --num-images 400 --json model_store/$$m/eval_independent.json || exit 1; \
	done

segmenter-dr: $(STAMP)
	$(TRAIN) $(SEG_DR) --init-from $(RUNS)/seg128_p3/model.safetensors --output $(RUNS)/seg128_dr
	$(TRAIN) $(SEG_DR2) --init-from $(RUNS)/seg128_dr/model.safetensors --output $(RUNS)/seg128_dr2
	$(TRAIN) $(SEG_DR3) --init-from $(RUNS)/seg128_dr2/model.safetensors --output $(RUNS)/seg128_dr3
	$(TRAIN) $(SEG_S3) --init-from $(RUNS)/seg128_dr3/model.safetensors --output $(RUNS)/seg128_s3
	$(TRAIN) $(SEG_S3B) --init-from $(RUNS)/seg128_s3/model.safetensors --output $(RUNS)/seg128_s3b
	$(TRAIN) $(SEG_S3C) --init-from $(RUNS)/seg128_s3b/model.safetensors --output $(RUNS)/seg128_s3c

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# TorchServe archives of the four demo models into archives/, TorchServe's model store
# (git-ignored; model_store/config.properties loads all of it). The sources stay in model_store/:
# TorchServe would read their folders as archives without a handler.
archives: $(STAMP)
	for m in sepvit_lite_shapes_cls sepvit_lite_shapes_det sepvit_lite_shapes_seg \
		sepvit_lite_shapes_inst; do \
		$(VENV)/bin/sepvit-archive --checkpoint model_store/$$m/model.safetensors \
			--config model_store/$$m/model-config.yaml --name $$m --export-path archives --force || exit 1; \
	done
