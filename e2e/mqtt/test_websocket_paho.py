"""MQTT 5 over WebSocket with paho-mqtt's own WebSocket transport (sub-protocol `mqtt`)."""

import queue
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 20


def connect(proxy, transport):
    """A connected MQTT 5 paho client over `transport` ("tcp" or "websockets")."""
    messages = queue.Queue()
    connack = queue.Queue()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"paho-{transport}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
        transport=transport,
    )
    if transport == "websockets":
        # paho offers the sub-protocol "mqtt" itself; the path must match the listener's.
        client.ws_set_options(path=proxy.ws_path)
    client.on_connect = lambda c, u, flags, reason, props: connack.put(reason)
    client.on_message = lambda c, u, msg: messages.put(msg)
    port = proxy.ws_port if transport == "websockets" else proxy.port
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    reason = connack.get(timeout=WAIT)
    assert not reason.is_failure, f"CONNACK {reason}"
    return client, messages


def subscribe(client, topic, qos):
    done = threading.Event()
    granted = []
    client.on_subscribe = lambda c, u, mid, codes, props: (granted.extend(codes), done.set())
    client.subscribe(topic, qos)
    assert done.wait(WAIT), "SUBACK"
    assert [int(code.value) for code in granted] == [qos]


def publish(client, topic, payload, qos, properties=None):
    info = client.publish(topic, payload, qos=qos, properties=properties)
    info.wait_for_publish(timeout=WAIT)
    assert info.is_published()


def close(client):
    client.disconnect()
    client.loop_stop()


def test_mqtt5_over_websockets_both_ways_with_a_tcp_client(proxy):
    ws, ws_messages = connect(proxy, "websockets")
    tcp, tcp_messages = connect(proxy, "tcp")
    subscribe(ws, "paho-ws/down/#", 1)
    subscribe(tcp, "paho-ws/up/#", 1)

    # A payload larger than paho's WebSocket frames are likely to be cut at, with MQTT 5
    # properties, from the WebSocket client to the TCP one.
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("via", "websocket")]
    big = bytes(range(256)) * 256
    publish(ws, "paho-ws/up/big", big, qos=1, properties=props)
    msg = tcp_messages.get(timeout=WAIT)
    assert (msg.topic, msg.payload, msg.qos) == ("paho-ws/up/big", big, 1)
    assert msg.properties.UserProperty == [("via", "websocket")]

    # And from TCP to the WebSocket client, QoS 2 delivered at the granted 1.
    publish(tcp, "paho-ws/down/small", b"hello ws", qos=2)
    msg = ws_messages.get(timeout=WAIT)
    assert (msg.topic, msg.payload, msg.qos) == ("paho-ws/down/small", b"hello ws", 1)

    close(ws)
    close(tcp)
