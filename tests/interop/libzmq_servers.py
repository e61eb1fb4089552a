"""A libzmq ROUTER and PUB (pyzmq) for our own client sockets to connect to.

Usage: libzmq_servers.py

It binds a ROUTER and a PUB on 127.0.0.1 ports of the system's choosing and prints
"ROUTER_PORT PUB_PORT". The ROUTER replies to one request [routing id, frames...] with
[routing id, frames..., b"reply"]. Then the PUB sends a b"skipped" and a b"news" message
every 20 ms for 10 s, with a ZMTP heartbeat (PING every 100 ms, 300 ms timeout), so that a
subscriber that does not reply to PING with PONG is disconnected.
"""

import sys
import time

import zmq

context = zmq.Context()
router = context.socket(zmq.ROUTER)
router.setsockopt(zmq.RCVTIMEO, 10_000)
router_port = router.bind_to_random_port("tcp://127.0.0.1")
publisher = context.socket(zmq.PUB)
publisher.setsockopt(zmq.HEARTBEAT_IVL, 100)
publisher.setsockopt(zmq.HEARTBEAT_TIMEOUT, 300)
pub_port = publisher.bind_to_random_port("tcp://127.0.0.1")
print(f"{router_port} {pub_port}", flush=True)

try:
    request = router.recv_multipart()
except zmq.Again:
    sys.exit("no request within 10 s")
router.send_multipart(request + [b"reply"])

deadline = time.monotonic() + 10
sequence = 0
while time.monotonic() < deadline:
    publisher.send_multipart([b"skipped", b"%d" % sequence])
    publisher.send_multipart([b"news", b"%d" % sequence])
    sequence += 1
    time.sleep(0.02)
