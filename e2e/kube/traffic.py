#!/usr/bin/env python3
"""MQTT traffic for the end-to-end run on the local node (e2e/kube/e2e.sh).

Real clients (paho-mqtt, MQTT 3.1.1 and 5.0) on the host talk to the proxy pods through
the client Service's ClusterIP and through the pods' server references. Server references
are DNS names of the cluster (`<pod>.<name>-headless.<ns>.svc:1883`) that the host cannot
resolve, so this script asks CoreDNS at the cluster DNS Service IP itself, as a pod's
resolver would (search domain `cluster.local`).

MQTT 5 clients follow redirects: CONNACK 0x9C/0x9D and DISCONNECT 0x9C/0x9D with a Server
Reference send them to the named pod; any other disconnect sends them back to the Service.
MQTT 3.1.1 clients reconnect through the Service.

Subcommands:
  check  one QoS 1 message per (protocol, entry point), received by a subscriber and found
         in Kafka; at least one MQTT 5 CONNACK redirect must have been followed.
  run    a traffic phase: publishers and subscribers at QoS 1 until a stop file appears,
         then the figures (sent, acknowledged, received, in Kafka, lost). Exits 1 when an
         acknowledged message is missing from Kafka or from a subscriber.
Every loop is bounded in time; the script stops by itself.
"""

import argparse
import ipaddress
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REDIRECT_CODES = (0x9C, 0x9D)


def log(*args):
    print("[traffic]", time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- DNS through CoreDNS
def _skip_name(data, i):
    while True:
        length = data[i]
        if length & 0xC0 == 0xC0:
            return i + 2
        if length == 0:
            return i + 1
        i += 1 + length


def dns_a(name, server, timeout=2.0):
    """The A records of `name` asked of `server`:53 over UDP (empty when there are none)."""
    qid = random.randrange(1 << 16)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, (server, 53))
        data, _ = s.recvfrom(4096)
    rid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    if rid != qid or flags & 0x000F:
        return []
    i = 12
    for _ in range(qd):
        i = _skip_name(data, i) + 4
    addresses = []
    for _ in range(an):
        i = _skip_name(data, i)
        rtype, _, _, length = struct.unpack(">HHIH", data[i : i + 10])
        i += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(data[i : i + 4]))
        i += length
    return addresses


class Resolver:
    """Host names of the cluster, resolved through CoreDNS like a pod's resolver does."""

    def __init__(self, server):
        self.server = server

    def resolve(self, host):
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
        names = [host] if host.endswith(".cluster.local") else [host + ".cluster.local", host]
        for name in names:
            for _ in range(3):
                try:
                    found = dns_a(name, self.server)
                except OSError:
                    continue
                if found:
                    return found[0]
                break
        raise OSError(f"{host}: no A record at {self.server}")


def split_target(target):
    host, _, port = target.rpartition(":")
    return host, int(port)


# ---------------------------------------------------------------- one client
class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n


class Client(threading.Thread):
    """A paho client in a thread of its own that reconnects until told to stop.

    role 'pub': publishes QoS 1 `prefix:seq` payloads to `topic` at `rate` per second with
    at most `window` in flight (only while connected), `count` of them if given.
    role 'sub': subscribes `topic` at QoS 1 on a persistent session and records payloads.
    """

    def __init__(self, cid, version, entry, resolver, stats, role, topic, prefix="", rate=10.0, window=10, count=None):
        super().__init__(daemon=True, name=cid)
        self.cid = cid
        self.v5 = version == "5.0"
        self.entry = entry
        self.resolver = resolver
        self.stats = stats
        self.role = role
        self.topic = topic
        self.prefix = prefix
        self.rate = rate
        self.window = window
        self.count = count
        self.stop = threading.Event()
        self.publishing = threading.Event()
        self.publishing.set()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        # Figures, read by the main thread once this thread has ended (or under the GIL).
        self.sent = []
        self.acked = set()
        self.nacked = {}
        self.pending = {}
        self.received = set()
        self.duplicates = 0
        self.redirects = 0
        self.path = []  # the targets connected to, in order
        self._connack = None
        self._goto = None
        self._seq = 0
        self._next = 0.0
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else False,
        )
        c.max_inflight_messages_set(window)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.c = c

    # paho callbacks (run in this thread, inside loop())
    def _on_connect(self, client, userdata, flags, reason, properties):
        self._connack = (reason.value if hasattr(reason, "value") else int(reason), flags, properties)

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        if self._connack is not None and self._connack[0] != 0:
            return  # the server closes after a refused CONNACK (paho calls it a protocol error)
        code = reason.value if hasattr(reason, "value") else int(reason)
        ref = getattr(properties, "ServerReference", None) if properties is not None else None
        if not flags.is_disconnect_packet_from_server:
            # Closed by us (code 0), or the connection broke without a DISCONNECT.
            self.stats.add("closed" if code == 0 else "connection_lost")
        elif self.v5 and code in REDIRECT_CODES and ref:
            self._goto = ref
            self.stats.add("disconnect_redirect")
        else:
            self.stats.add(f"disconnect_0x{code:02x}")

    def _on_publish(self, client, userdata, mid, reason, properties):
        payload = self.pending.pop(mid, None)
        if payload is None:
            return
        code = reason.value if hasattr(reason, "value") else int(reason)
        if code == 0:
            self.acked.add(payload)
        else:
            self.nacked[code] = self.nacked.get(code, 0) + 1

    def _on_subscribe(self, client, userdata, mid, reasons, properties):
        codes = [r.value if hasattr(r, "value") else int(r) for r in reasons]
        if all(c < 0x80 for c in codes):
            self.subscribed.set()
        else:
            self.stats.add("suback_failure")

    def _on_message(self, client, userdata, message):
        payload = message.payload.decode(errors="replace")
        if payload in self.received:
            self.duplicates += 1
        else:
            self.received.add(payload)

    # the loop
    def _connect(self, target):
        host, port = split_target(target)
        ip = self.resolver.resolve(host)
        self._connack = None
        self._goto = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600 if self.role == "sub" else 0
            self.c.connect(ip, port, keepalive=20, clean_start=False, properties=props)
        else:
            self.c.connect(ip, port, keepalive=20)
        deadline = time.time() + 10
        while self._connack is None and time.time() < deadline and not self.stop.is_set():
            if self.c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
        return self._connack

    def run(self):
        target = self.entry
        deadline = time.time() + 3600
        while not self.stop.is_set() and time.time() < deadline:
            try:
                connack = self._connect(target)
            except (OSError, ValueError) as err:
                self.stats.add("connect_error")
                log(f"{self.cid}: connect to {target}: {err}")
                target = self.entry
                self.stop.wait(0.5)
                continue
            if connack is None:
                self.stats.add("no_connack")
                target = self.entry
                continue
            code, flags, props = connack
            if code != 0:
                ref = getattr(props, "ServerReference", None)
                if self.v5 and code in REDIRECT_CODES and ref:
                    self.redirects += 1
                    self.stats.add("connack_redirect")
                    target = ref
                else:
                    self.stats.add(f"connack_0x{code:02x}")
                    log(f"{self.cid}: CONNACK 0x{code:02x} from {target}")
                    target = self.entry
                    self.stop.wait(0.5)
                continue
            self.path.append(target)
            self.stats.add("connected")
            self.connected.set()
            if self.role == "sub" and not flags.session_present:
                self.c.subscribe(self.topic, qos=1)
            self._next = time.time()
            while not self.stop.is_set():
                if self.c.loop(0.02) != mqtt.MQTT_ERR_SUCCESS:
                    break
                if self.role == "pub":
                    self._pump()
            self.connected.clear()
            target = self._goto or self.entry
        try:
            self.c.disconnect()
            for _ in range(20):
                if self.c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
        except OSError:
            pass

    def _pump(self):
        now = time.time()
        if not self.publishing.is_set():
            return
        while self._next <= now and len(self.pending) < self.window:
            if self.count is not None and self._seq >= self.count:
                return
            payload = f"{self.prefix}:{self._seq}"
            info = self.c.publish(self.topic, payload, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                self.stats.add("publish_error")
                return
            self._seq += 1
            self.sent.append(payload)
            self.pending[info.mid] = payload
            self._next += 1.0 / self.rate
        if self._next < now - 1.0:
            self._next = now  # do not burst after a reconnect

    def finish(self):
        self.stop.set()
        self.join(15)


# ---------------------------------------------------------------- Kafka
def kafka_payloads(bootstrap, topic, prefix):
    """Payloads starting with `prefix` in every partition of `topic` (kcat, to the end)."""
    out = subprocess.run(
        ["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%s\n"],
        capture_output=True,
        timeout=300,
        check=True,
    ).stdout.decode(errors="replace")
    return {line for line in out.splitlines() if line.startswith(prefix)}


def wait_until(pred, secs, step=0.1):
    deadline = time.time() + secs
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


# ---------------------------------------------------------------- check
def cmd_check(args):
    resolver = Resolver(args.dns)
    stats = Stats()
    run = f"check-{int(time.time())}-{random.randrange(1 << 16):04x}"
    entries = [("service", args.service)] + [(f"ref:{r}", r) for r in args.reference]
    failures = []
    results = []
    expected = set()
    for version in ("3.1.1", "5.0"):
        for label, entry in entries:
            tag = f"{version}-{len(results)}"
            topic = f"e2e/{run}/{tag}"
            prefix = f"{run}:{tag}"
            sub = Client(f"{run}-sub-{tag}", version, entry, resolver, stats, "sub", topic)
            pub = Client(f"{run}-pub-{tag}", version, entry, resolver, stats, "pub", topic, prefix, rate=20, count=3)
            sub.start()
            ok = sub.subscribed.wait(30)
            if ok:
                pub.start()
                ok = wait_until(lambda: len(pub.acked) == 3 and len(sub.received) == 3, 30)
            pub.finish()
            sub.finish()
            expected |= pub.acked
            row = {
                "version": version,
                "entry": label,
                "acked": len(pub.acked),
                "received": len(sub.received),
                "redirects": pub.redirects + sub.redirects,
                "publisher_served_by": pub.path[-1:] or None,
            }
            results.append(row)
            log(json.dumps(row))
            if not ok:
                failures.append(f"{version} via {label}: acked {len(pub.acked)}/3, received {len(sub.received)}/3")
    # A redirect followed for real: fresh MQTT 5 clients through the Service until one is
    # sent elsewhere (each lands on a pod that does not own its session with odds (n-1)/n).
    redirected = sum(r["redirects"] for r in results)
    attempts = 0
    while redirected == 0 and attempts < 20:
        attempts += 1
        tag = f"redirect-{attempts}"
        topic = f"e2e/{run}/{tag}"
        pub = Client(f"{run}-pub-{tag}", "5.0", args.service, resolver, stats, "pub", topic, f"{run}:{tag}", count=1)
        pub.start()
        wait_until(lambda: len(pub.acked) == 1, 30)
        pub.finish()
        expected |= pub.acked
        if pub.redirects and pub.acked:
            redirected += pub.redirects
            log(f"{pub.cid}: CONNACK 0x9C via the Service, followed to {pub.path[-1]}, PUBACK 0x00")
    if redirected == 0:
        failures.append("no MQTT 5 client was redirected (CONNACK 0x9C + Server Reference) in %d tries" % attempts)
    in_kafka = wait_until(lambda: expected <= kafka_payloads(args.bootstrap, args.topic, run), 30, 1.0)
    found = kafka_payloads(args.bootstrap, args.topic, run)
    if not in_kafka:
        failures.append(f"{len(expected - found)} acknowledged messages missing from Kafka topic {args.topic}")
    log(f"check: {len(expected)} acknowledged, {len(expected & found)} in Kafka, redirects followed {redirected}, {stats.counts}")
    if failures:
        for f in failures:
            log("FAILED:", f)
        return 1
    return 0


# ---------------------------------------------------------------- run (a phase under load)
def served_by(clients):
    """Connections per target (pod name for server references, 'service' for the ClusterIP)."""
    counts = {}
    for c in clients:
        for target in c.path:
            host = split_target(target)[0]
            key = "service" if target == c.entry else host.split(".")[0]
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def cmd_run(args):
    resolver = Resolver(args.dns)
    stats = Stats()
    run = f"{args.phase}-{int(time.time())}-{random.randrange(1 << 16):04x}"
    base = f"e2e/{run}"
    versions = ["5.0", "3.1.1"]
    subs = [
        Client(f"{run}-sub-{i}", versions[i % 2], args.service, resolver, stats, "sub", f"{base}/#")
        for i in range(args.subscribers)
    ]
    for s in subs:
        s.start()
    if not all(s.subscribed.wait(60) for s in subs):
        log("FAILED: subscribers did not subscribe in 60 s", stats.counts)
        return 1
    pubs = [
        Client(f"{run}-pub-{i}", versions[i % 2], args.service, resolver, stats, "pub", f"{base}/{i}",
               f"{run}:{i}", rate=args.rate, window=args.window)
        for i in range(args.publishers)
    ]
    for p in pubs:
        p.start()
    with open(os.path.join(args.control, "started"), "w") as f:
        f.write(run + "\n")
    log(f"{args.phase}: {len(pubs)} publishers x {args.rate}/s, {len(subs)} subscribers ({run})")
    stop_file = os.path.join(args.control, "stop")
    started = time.time()
    last = 0.0
    while not os.path.exists(stop_file) and time.time() - started < args.max_seconds:
        time.sleep(0.5)
        if time.time() - last >= 10:
            last = time.time()
            acked = sum(len(p.acked) for p in pubs)
            log(f"{args.phase}: +{int(last - started)}s sent {sum(len(p.sent) for p in pubs)} acked {acked} "
                f"received {min(len(s.received) for s in subs)} {stats.counts}")
    for p in pubs:
        p.publishing.clear()
    wait_until(lambda: all(not p.pending for p in pubs), 30)
    for p in pubs:
        p.finish()
    acked = set().union(*(p.acked for p in pubs))
    sent = [m for p in pubs for m in p.sent]
    wait_until(lambda: all(acked <= s.received for s in subs), args.drain_seconds, 0.5)
    for s in subs:
        s.finish()
    found = kafka_payloads(args.bootstrap, args.topic, f"{run}:")
    lost_kafka = acked - found
    lost_subs = [len(acked - s.received) for s in subs]
    nacked = {}
    for p in pubs:
        for code, n in p.nacked.items():
            nacked[f"0x{code:02x}"] = nacked.get(f"0x{code:02x}", 0) + n
    figures = {
        "phase": args.phase,
        "seconds": round(time.time() - started),
        "publishers": len(pubs),
        "subscribers": len(subs),
        "sent": len(sent),
        "acknowledged": len(acked),
        "negative_pubacks": nacked,
        "unacknowledged": len(sent) - len(acked) - sum(nacked.values()),
        "received_min": min(len(s.received & set(sent)) for s in subs),
        "received_max": max(len(s.received & set(sent)) for s in subs),
        "duplicates_at_subscribers": sum(s.duplicates for s in subs),
        "in_kafka": len(found & set(sent)),
        "acked_missing_in_kafka": len(lost_kafka),
        "acked_missing_at_subscribers": lost_subs,
        "redirects_followed": sum(c.redirects for c in pubs + subs) + stats.counts.get("disconnect_redirect", 0),
        "connections_by_target": served_by(pubs + subs),
        "events": stats.counts,
    }
    print(json.dumps(figures))
    with open(os.path.join(args.control, "figures.json"), "w") as f:
        json.dump(figures, f)
    failed = []
    if not acked:
        failed.append("nothing was acknowledged")
    if lost_kafka:
        failed.append(f"{len(lost_kafka)} acknowledged messages missing from Kafka, e.g. {sorted(lost_kafka)[:5]}")
    if any(lost_subs):
        failed.append(f"acknowledged messages missing at subscribers: {lost_subs}")
    for f in failed:
        log("FAILED:", f)
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dns", required=True, help="cluster DNS Service IP (CoreDNS)")
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers as the host reaches them")
    parser.add_argument("--topic", required=True, help="the messages topic")
    parser.add_argument("--service", required=True, help="host:port of the client Service")
    sub = parser.add_subparsers(dest="cmd", required=True)
    check = sub.add_parser("check")
    check.add_argument("--reference", action="append", default=[], help="a pod's server reference (repeat)")
    phase = sub.add_parser("run")
    phase.add_argument("--phase", required=True)
    phase.add_argument("--control", required=True, help="directory: 'started' is written, 'stop' is awaited")
    phase.add_argument("--publishers", type=int, default=4)
    phase.add_argument("--subscribers", type=int, default=2)
    phase.add_argument("--rate", type=float, default=20.0, help="messages per second per publisher")
    phase.add_argument("--window", type=int, default=10, help="QoS 1 messages in flight per publisher")
    phase.add_argument("--drain-seconds", type=float, default=60.0)
    phase.add_argument("--max-seconds", type=float, default=1200.0)
    args = parser.parse_args()
    return cmd_check(args) if args.cmd == "check" else cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
