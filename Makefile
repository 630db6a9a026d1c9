# Two commands do all the set-up on a fresh machine (python3 >= 3.11.4 is all they need):
#   make demo   creates .venv, installs the package, runs the main job on built-in data
#   make test   creates .venv, installs the package with test extras, runs ruff + pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo refine-demo test bench format clean app gpu-wheels

# --no-compile: no byte-compiling of the 4 GB of packages at install (half the install time);
# Python compiles what it imports, once
$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[test]'
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
	$(BIN)/python -m pip install --quiet --no-compile -e '.[app]'
	touch $@

app: $(VENV)/.installed-app
	$(BIN)/python -m nd3d_jax.app --config=configs/generate.py:demo --params=out/demo

refine-demo: $(STAMP)
	$(BIN)/python -m nd3d_jax.refine_demo --config=configs/refine_demo.py --workdir=out/refine_demo

# Wheels the GPU host lacks (CPython 3.12, x86_64; ~40 MB), for benchmarks/gpu.sh, which
# installs them there: `make gpu-wheels`, then run(command="bash benchmarks/gpu.sh",
# carry=[".whl"]). Versions as tested here (setup.py's ranges).
GPU_WHEELS := grain==0.2.18 array-record==0.8.6 cloudpickle==3.1.3 portpicker==1.6.0 \
	trimesh==5.2.0 ml-collections==1.1.0 libigl==2.6.3 xatlas==0.0.11 \
	fast-simplification==0.2.0 rtree==1.4.1 embreex==4.4.0.post1 einops==0.8.2 \
	charset-normalizer==3.5.3 diffusers==0.42.1
gpu-wheels: $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl/gen $(GPU_WHEELS)

# The Khronos glTF validator, which the tests run on every GLB we write.
GLTF_VALIDATOR := .tools/node_modules/gltf-validator/package.json
$(GLTF_VALIDATOR):
	npm install --prefix .tools --no-audit --no-fund --silent gltf-validator@2.0.0-dev.3.10

# The PyTorch metric references that import torchvision (lpips, clean-fid), outside the venv's
# site-packages: tests/torch_references.py says why and puts this folder on sys.path.
TORCH_REFS := $(VENV)/torch-refs/.installed
$(TORCH_REFS): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-compile --no-deps --upgrade --target $(VENV)/torch-refs \
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
	rm -rf $(VENV) .tools .whl out .pytest_cache .ruff_cache *.egg-info
