"""A libzmq client (pyzmq) that talks to a running data server.

Usage: FORUM_CLUSTER_KEY=KEY libzmq_client.py REQUEST_ENDPOINT PUB_ENDPOINT

It sends a Register request on a REQ socket and checks the reply, then subscribes to the
`webserver` topic with a SUB socket, makes a change, and checks that the change arrives.
When FORUM_CLUSTER_KEY is set, every request carries the MAC frame of docs/replication.md,
and every reply and publication must carry a valid one. It prints one line per check and
exits with status 1 on the first failure.
"""

import hashlib
import hmac
import os
import struct
import sys
import time

import msgpack
import zmq

PROTOCOL_VERSION = 1
CLUSTER_KEY = os.environ.get("FORUM_CLUSTER_KEY", "").strip().encode()


def mac(label, frames):
    """Return HMAC-SHA256 under the cluster key of the label and each frame with its length."""
    message = label + b"".join(struct.pack(">I", len(frame)) + frame for frame in frames)
    return hmac.new(CLUSTER_KEY, message, hashlib.sha256).digest()


def unseal(label, frames):
    """Check and remove the MAC frame when a key is set; exit on a missing or invalid one."""
    if not CLUSTER_KEY:
        return frames
    *covered, received = frames
    if not hmac.compare_digest(received, mac(label, covered)):
        sys.exit(f"invalid MAC on a {label.decode()} message")
    return covered


def request(socket, request_id, body):
    payload = msgpack.packb({"v": PROTOCOL_VERSION, "id": request_id, "request": body})
    frames = [payload, mac(b"forum-request", [payload])] if CLUSTER_KEY else [payload]
    socket.send_multipart(frames)
    if not socket.poll(5000):
        sys.exit(f"no reply to request {request_id} within 5 s")
    (payload,) = unseal(b"forum-reply", socket.recv_multipart())
    reply = msgpack.unpackb(payload)
    if reply.get("v") != PROTOCOL_VERSION or reply.get("id") != request_id:
        sys.exit(f"reply does not match request {request_id}: {reply!r}")
    return reply["reply"]


def main():
    request_endpoint, pub_endpoint = sys.argv[1], sys.argv[2]
    context = zmq.Context()

    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(request_endpoint)
    reply = request(req, 1, {"Register": {"name": "pyzmq", "password": "from-libzmq"}})
    if reply.get("User", {}).get("name") != "pyzmq":
        sys.exit(f"Register failed: {reply!r}")
    print("REQ request answered:", reply)

    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"webserver")
    sub.connect(pub_endpoint)
    # A subscription takes effect once it reaches the publisher, so keep making changes until
    # one arrives.
    deadline = time.monotonic() + 10
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        title = f"libzmq subject {attempt}"
        reply = request(req, 100 + attempt, {"CreateSubject": {"title": title, "created_by": "pyzmq"}})
        if "Subject" not in reply:
            sys.exit(f"CreateSubject failed: {reply!r}")
        if sub.poll(500):
            topic, payload = unseal(b"forum-publication", sub.recv_multipart())
            change = msgpack.unpackb(payload)
            if topic != b"webserver" or change.get("v") != PROTOCOL_VERSION:
                sys.exit(f"unexpected publication: {topic!r} {change!r}")
            print("SUB received on", topic.decode(), ":", change["change"]["kind"])
            return
    sys.exit("no change arrived on the webserver topic within 10 s")


if __name__ == "__main__":
    main()
