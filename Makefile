# Two commands do all the set-up on a fresh machine (python3 >= 3.10 is all they need):
#   make demo   creates .venv, installs the package, runs the main job on built-in data
#   make test   creates .venv, installs the package with test extras, runs ruff + pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo refine-demo test bench format clean app

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Train the demo model, then generate textured objects for the 4 held-out test shapes (their
# condition meshes stand in for Shap-E, whose weights cannot be downloaded here).
demo: $(STAMP)
	$(BIN)/python -m nd3d_jax.train --config=configs/demo.py --workdir=out/demo
	$(BIN)/python -m data_pipelines.export_examples --data_dir=out/demo/data/tfds \
		--dataset=omniobject3d --config=tiny --split=test --count=4 --out=out/demo/held_out
	$(BIN)/python -m nd3d_jax.generate --config=configs/generate.py:demo --params=out/demo \
		--inputs=out/demo/held_out/inputs.jsonl --out=out/demo/generated
	@echo "textured objects: out/demo/generated/*/mesh.glb; sheets: out/demo/generated/*/preview.png"

# The web demo on http://127.0.0.1:7860 with the `make demo` model (out/demo).
$(VENV)/.installed-app: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[app]'
	touch $@

app: $(VENV)/.installed-app
	$(BIN)/python -m nd3d_jax.app --config=configs/generate.py:demo --params=out/demo

refine-demo: $(STAMP)
	$(BIN)/python -m nd3d_jax.refine_demo --config=configs/refine_demo.py --workdir=out/refine_demo

# The Khronos glTF validator, which the tests run on every GLB we write.
GLTF_VALIDATOR := .tools/node_modules/gltf-validator/package.json
$(GLTF_VALIDATOR):
	npm install --prefix .tools --no-audit --no-fund --silent gltf-validator@2.0.0-dev.3.10

# The PyTorch metric references that import torchvision (lpips, clean-fid), outside the venv's
# site-packages: tests/torch_references.py says why and puts this folder on sys.path.
TORCH_REFS := $(VENV)/torch-refs/.installed
$(TORCH_REFS): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/torch-refs \
		torchvision==0.28.0 lpips==0.1.4 clean-fid==0.1.35
	touch $(TORCH_REFS)

# Debian's Chromium, which the web demo's browser test drives (headless, SwiftShader WebGL).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get install -y -q chromium > /dev/null 2>&1 || \
		(apt-get update -q > /dev/null && apt-get install -y -q chromium > /dev/null) || \
		echo "WARNING: could not install chromium: the browser test will be skipped"

test: $(STAMP) $(GLTF_VALIDATOR) $(TORCH_REFS) $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -rs -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

bench: $(STAMP)
	$(BIN)/python -m nd3d_jax.benchmark geometry render data encoders diffusion train \
		--out=out/bench/bench.json

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .tools out .pytest_cache .ruff_cache *.egg-info
