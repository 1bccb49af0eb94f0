# The two commands a newcomer needs: `make run` and `make test`. Everything they need is
# installed on first use (see e2e/env/install-tools.sh) and cached outside the repository.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help env-up env-down env-clean run run-cluster test test-browser lint crds bench bench-sessions images node-smoke e2e fuzz

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

env-up: ## start the local Kafka + Kubernetes control plane (idempotent; NODE=1 adds a node); writes .local/env
	@bash e2e/env/up.sh

env-down: ## stop everything env-up started (the node too) and undo what the node changed on the host
	@bash e2e/env/down.sh

images: ## proxy and operator images (localhost/...:dev) without Docker; imported into the node if it runs
	@bash e2e/images/build.sh

node-smoke: ## NODE=1 env-up, images, then a proxy pod and DNS/apiserver checks on the node
	@bash e2e/node/smoke.sh

e2e: ## on the local node: helm install, apply, MQTT 3.1.1/5.0, scale 3->5->2 and roll under QoS 1 traffic, delete
	@bash e2e/kube/e2e.sh

env-clean: env-down ## stop the environment and delete its data
	rm -rf .local

run: env-up ## start the environment and the proxy against it
	@bash e2e/run-proxy.sh

run-cluster: env-up ## N proxies (N=3) as one broker on 127.0.0.1:1883.. with redirects on
	@bash e2e/run-cluster.sh

test: ## start the environment, then fmt, clippy, every test; fails on any skipped test
	@bash e2e/test.sh

test-browser: env-up ## MQTT.js in headless Chromium through the proxy over ws and wss (screenshots in target/browser/)
	@bash e2e/browser/run.sh

lint: ## cargo fmt --check and clippy only
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

crds: ## regenerate crds/ from the operator's types, and deploy/ from the Helm chart
	cargo run -q -p mqtt-kafka-operator --bin crdgen > crds/mqttkafkaproxies.mqttkafka.io.yaml
	bash e2e/env/install-tools.sh helm
	source e2e/env/lib.sh && HELM="$$BIN_DIR/helm-$$HELM_VERSION" bash deploy/render.sh > deploy/mqtt-kafka-operator.yaml

bench: ## proxy vs Mosquitto on loopback: idle RSS, latency, throughput, fan-out, with the ratio
	@bash e2e/bench/run.sh

fuzz: ## coverage-guided fuzzing of the codec and the connection state machines (RUNS=5000000 per target; nightly)
	@bash e2e/fuzz.sh

bench-sessions: ## sessions: ownership move after SIGKILL / SIGTERM, reconnect storm, Kafka clients
	@bash e2e/bench/sessions.sh
