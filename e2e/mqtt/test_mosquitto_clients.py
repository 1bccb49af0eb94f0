"""Mosquitto's own command line clients (3.1.1 and 5.0) against the proxy."""

import subprocess
import time


def sub_process(proxy, *args):
    return subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(proxy.port), "-C", "1", "-W", "20", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def publish(proxy, *args):
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(proxy.port), *args], check=True, timeout=20)


def wait_subscribed():
    # mosquitto_sub has no "subscribed" signal; the SUBSCRIBE round trip takes milliseconds.
    time.sleep(1.0)


def test_mosquitto_v311_publish_and_subscribe(proxy):
    sub = sub_process(proxy, "-t", "mosq/311/#", "-q", "1", "-v")
    wait_subscribed()
    publish(proxy, "-t", "mosq/311/a", "-m", "hello-311", "-q", "1")
    out, err = sub.communicate(timeout=30)
    assert out.strip() == "mosq/311/a hello-311", err


def test_mosquitto_v5_user_properties_survive_the_trip_through_kafka(proxy):
    sub = sub_process(proxy, "-V", "mqttv5", "-t", "mosq/v5/#", "-F", "%t %p %P")
    wait_subscribed()
    publish(proxy, "-V", "mqttv5", "-t", "mosq/v5/a", "-m", "hello-v5", "-q", "2",
            "-D", "publish", "user-property", "origin", "mosquitto")
    out, err = sub.communicate(timeout=30)
    assert out.strip() == "mosq/v5/a hello-v5 origin:mosquitto", err
