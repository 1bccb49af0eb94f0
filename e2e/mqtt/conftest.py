"""Fixtures for the MQTT conformance suite: the real proxy binary on its own Kafka topics.

The suite talks to the proxy with clients that are not this project's codec: paho-mqtt
(Python) and Mosquitto's command line clients; Kafka is read with kcat.
"""

import os
import pathlib
import socket
import subprocess
import time
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PROXY_BIN = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug" / "mqtt-kafka-proxy"


def _env_file():
    values = {}
    # `make env-up` writes it to its state dir ($MQTT_KAFKA_STATE, default ./.local).
    state = pathlib.Path(os.environ.get("MQTT_KAFKA_STATE", REPO / ".local"))
    path = pathlib.Path(os.environ.get("MQTT_KAFKA_ENV_FILE", state / "env"))
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip()
    return values


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    def __init__(self, tmp_path, bootstrap):
        run = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.port = free_port()
        self.ws_port = free_port()
        self.ws_path = "/mqtt"
        self.admin_port = free_port()
        self.messages = f"py-{run}-messages"
        self.retained = f"py-{run}-retained"
        config = tmp_path / "proxy.yaml"
        config.write_text(
            f"""
listeners:
  - {{name: mqtt, protocol: tcp, address: "127.0.0.1:{self.port}"}}
  - {{name: ws, protocol: websocket, address: "127.0.0.1:{self.ws_port}", path: {self.ws_path}}}
admin: {{address: "127.0.0.1:{self.admin_port}"}}
kafka: {{bootstrapServers: "{bootstrap}"}}
topics: {{messages: {self.messages}, retained: {self.retained}, sessions: py-{run}-sessions}}
"""
        )
        self.log = open(tmp_path / "proxy.log", "w")
        self.process = subprocess.Popen(
            [str(PROXY_BIN), "--config", str(config), "--create-topics"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(tmp_path / "proxy.log")

    def _wait_ready(self, log_path):
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited: {log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.admin_port), timeout=1) as s:
                    s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    ready = s.recv(64).startswith(b"HTTP/1.1 200")
                # /readyz can turn 200 a moment before the MQTT listeners are bound (it
                # watches Kafka and the retained view, not the sockets): wait for those too.
                if ready and all(self._accepts(port) for port in (self.port, self.ws_port)):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"proxy not ready in 60 s: {log_path.read_text()}")

    @staticmethod
    def _accepts(port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP") or _env_file().get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        pytest.fail("no KAFKA_BOOTSTRAP: start the local environment with `make env-up`")
    if not PROXY_BIN.exists():
        pytest.fail(f"{PROXY_BIN} is missing: run `cargo build -p mqtt-kafka-proxy`")
    p = Proxy(tmp_path_factory.mktemp("proxy"), bootstrap)
    yield p
    p.stop()
