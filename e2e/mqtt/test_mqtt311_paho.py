"""MQTT 3.1.1 conformance with paho-mqtt, and what 3.1.1 publishes look like in Kafka."""

import queue
import socket
import subprocess
import threading
import uuid

import paho.mqtt.client as mqtt

WAIT = 20


class Paho:
    """A connected paho-mqtt 3.1.1 client whose received messages land in a queue."""

    def __init__(self, proxy, client_id=None, clean_session=True, will=None):
        self.messages = queue.Queue()
        self.connack = queue.Queue()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id if client_id is not None else f"paho-{uuid.uuid4().hex[:8]}",
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if will:
            self.client.will_set(*will)
        self.client.on_connect = lambda c, u, flags, rc, props: self.connack.put(rc)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.connect("127.0.0.1", proxy.port, keepalive=30)
        self.client.loop_start()
        self.rc = self.connack.get(timeout=WAIT)

    def subscribe(self, topic, qos):
        done = threading.Event()
        self.client.on_subscribe = lambda c, u, mid, codes, props: done.set()
        self.client.subscribe(topic, qos)
        assert done.wait(WAIT), "SUBACK"

    def publish(self, topic, payload, qos=0, retain=False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published()

    def next(self):
        return self.messages.get(timeout=WAIT)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_publish_and_subscribe_at_every_qos_with_wildcards(proxy):
    sub = Paho(proxy)
    sub.subscribe("paho/+/temp", 1)
    pub = Paho(proxy)
    for qos in (0, 1, 2):
        pub.publish("paho/room/temp", f"q{qos}", qos=qos)
    got = [sub.next() for _ in range(3)]
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("paho/room/temp", b"q0", 0),
        ("paho/room/temp", b"q1", 1),
        ("paho/room/temp", b"q2", 1),  # delivered at min(published 2, granted 1)
    ]
    sub.close()
    pub.close()


def test_retained_message_is_replayed_with_the_retain_flag(proxy):
    pub = Paho(proxy)
    pub.publish("paho/retained/door", b"open", qos=1, retain=True)
    sub = Paho(proxy)
    sub.subscribe("paho/retained/#", 1)
    msg = sub.next()
    assert (msg.topic, msg.payload, msg.retain) == ("paho/retained/door", b"open", True)
    sub.close()
    pub.close()


def test_will_is_published_when_the_connection_drops(proxy):
    watcher = Paho(proxy)
    watcher.subscribe("paho/wills/#", 1)
    doomed = Paho(proxy, will=("paho/wills/doomed", b"offline", 1, False))
    # Close the socket under paho's feet: an abnormal disconnect.
    doomed.client.socket().shutdown(socket.SHUT_RDWR)
    msg = watcher.next()
    assert (msg.topic, msg.payload) == ("paho/wills/doomed", b"offline")
    doomed.client.loop_stop()
    watcher.close()


def test_an_empty_client_id_without_clean_session_is_rejected_with_0x02(proxy):
    # paho refuses to send this CONNECT, so it is written by hand: protocol level 4,
    # flags 0 (clean session off), keep-alive 60, empty client id.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT) as s:
        s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x00\x00\x3c\x00\x00")
        assert s.recv(4) == b"\x20\x02\x00\x02"  # CONNACK: identifier rejected
        assert s.recv(1) == b""  # then closed


def test_an_unknown_protocol_level_gets_0x01(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT) as s:
        s.sendall(b"\x10\x0e\x00\x04MQTT\x07\x02\x00\x3c\x00\x02id")
        assert s.recv(4) == b"\x20\x02\x00\x01"  # CONNACK: unacceptable protocol version


def test_a_311_publish_lands_in_kafka_with_key_and_headers(proxy):
    pub = Paho(proxy, client_id="paho-kafka")
    pub.publish("paho/kafka/check", b"payload-311", qos=1)
    out = subprocess.run(
        ["kcat", "-C", "-b", proxy.bootstrap, "-t", proxy.messages, "-e", "-q",
         "-f", "%k|%s|%h\n"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    line = next(l for l in out.splitlines() if l.startswith("paho/kafka/check|"))
    key, value, headers = line.split("|", 2)
    assert value == "payload-311"
    assert "mqtt-qos=1" in headers and "mqtt-client-id=paho-kafka" in headers
    pub.close()
