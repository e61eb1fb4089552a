"""A libzmq client (pyzmq) that talks to a running data server.

Usage: libzmq_client.py REQUEST_ENDPOINT PUB_ENDPOINT

It sends a Register request on a REQ socket and checks the reply, then subscribes to the
`webserver` topic with a SUB socket, makes a change, and checks that the change arrives.
It prints one line per check and exits with status 1 on the first failure.
"""

import sys
import time

import msgpack
import zmq

PROTOCOL_VERSION = 1


def request(socket, request_id, body):
    socket.send(msgpack.packb({"v": PROTOCOL_VERSION, "id": request_id, "request": body}))
    if not socket.poll(5000):
        sys.exit(f"no reply to request {request_id} within 5 s")
    reply = msgpack.unpackb(socket.recv())
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
            topic, payload = sub.recv_multipart()
            change = msgpack.unpackb(payload)
            if topic != b"webserver" or change.get("v") != PROTOCOL_VERSION:
                sys.exit(f"unexpected publication: {topic!r} {change!r}")
            print("SUB received on", topic.decode(), ":", change["change"]["kind"])
            return
    sys.exit("no change arrived on the webserver topic within 10 s")


if __name__ == "__main__":
    main()
