# heartvec: `make demo` and `make test` work on a fresh clone; everything they need is installed
# into .venv by the rules below.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-output

WEB := services/api/web
STATIC := services/api/heartvec_api/static

.PHONY: demo test lint typecheck pytest bench clean web browser images images-check container-tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,bench,service]'
	touch $@

demo: $(VENV)/.installed web
	$(BIN)/heartvec phantom $(DEMO_DIR)/volumes --count 2 --seed 9000
	$(BIN)/heartvec inspect $(DEMO_DIR)/volumes/phantom_s9000.nii.gz
	$(BIN)/heartvec prepare $(DEMO_DIR)/volumes --out $(DEMO_DIR)/prepared
	$(BIN)/heartvec split $(DEMO_DIR)/prepared --val-fraction 0.5
	$(BIN)/heartvec reconstruct $(DEMO_DIR)/volumes/phantom_s9000.nii.gz --out $(DEMO_DIR)/reconstruction
	@echo
	@echo "demo outputs:"
	@echo "  label volumes     $(DEMO_DIR)/volumes/"
	@echo "  training samples  $(DEMO_DIR)/prepared/*.npz"
	@echo "  quality report    $(DEMO_DIR)/prepared/quality.json"
	@echo "  quality picture   $(DEMO_DIR)/prepared/quality.png"
	@echo "  split             $(DEMO_DIR)/prepared/{train,val}.csv"
	@echo "  reconstruction    $(DEMO_DIR)/reconstruction/ (bundled checkpoint, unseen phantom)"
	@echo "    meshes          $(DEMO_DIR)/reconstruction/meshes/*.ply"
	@echo "    whole heart     $(DEMO_DIR)/reconstruction/heart.glb"
	@echo "    label volume    $(DEMO_DIR)/reconstruction/reconstruction.nii.gz"
	@echo "    report          $(DEMO_DIR)/reconstruction/report.json (Dice, HD95, timings)"
	@echo "    picture         $(DEMO_DIR)/reconstruction/preview.png"
	@echo "  web page          see the README, section The HTTP service (serve --embedded,"
	@echo "                    then open http://127.0.0.1:8000/ and drop a volume on it)"

# The web page: three.js bundled by esbuild into the folder the API serves (needs Node.js/npm).
web: $(STATIC)/app.js

$(STATIC)/app.js: $(WEB)/package.json $(WEB)/package-lock.json $(WEB)/build.mjs $(wildcard $(WEB)/src/*)
	@if command -v npm >/dev/null; then \
		cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build; \
	else \
		echo "npm not found: the web page is not built (tests/test_web.py will be skipped)"; \
	fi

# Debian's Chromium for the browser test (installed when missing and we may: root with apt).
browser:
	@if ! command -v chromium >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
			|| (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null); \
		else \
			echo "chromium not found and not installable here: tests/test_web.py will be skipped"; \
		fi; \
	fi

# Container images from docker/*.Dockerfile, built and run with buildah (chroot isolation: no Docker
# engine or container runtime needed). `make images`: localhost/heartvec-{api,worker,trainer}:dev,
# on bases pulled or, where no registry answers, made here (docker/bases.sh). `make images-check`
# runs them end to end against this machine's Postgres and Redis (README: Container images).
images: container-tools
	bash docker/images.sh

images-check: images
	bash docker/images-check.sh

# buildah, podman and debootstrap, from Debian's packages when missing (root with apt)
container-tools:
	@missing=""; for tool in buildah podman debootstrap; do \
		command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null \
			|| (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null); \
		else \
			echo "make images needs$$missing (and root)"; exit 1; \
		fi; \
	fi

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint docker/*.Dockerfile
	$(BIN)/shellcheck -x .ci/run apptainer/*.sbatch docker/*.sh bench/*.sh services/trainer/gpu_session.sh
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec compose.yaml
	sed 's/!reset //' compose.cpu.yaml | $(BIN)/check-jsonschema --builtin-schema vendor.compose-spec --force-filetype yaml -

typecheck: $(VENV)/.installed
	$(BIN)/mypy

# two pytest-xdist workers, a file each at a time, each with half the cores (tests/conftest.py):
# the service tests' waiting overlaps the training tests' arithmetic. TEST_WORKERS=0: one process
TEST_WORKERS ?= 2
pytest: $(VENV)/.installed web browser
	$(BIN)/pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: lint typecheck pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/prepare.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/reconstruct.py
	$(BIN)/python bench/refinement.py
	$(BIN)/python bench/supports.py
	$(BIN)/python bench/real_ct.py
	$(BIN)/python bench/working_resolution.py
	$(BIN)/python bench/service.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache $(WEB)/node_modules $(STATIC)
