"""Send pipelined PostMessage requests to one data server and wait for every reply.

Usage: write_driver.py REQUEST_ENDPOINT COUNT

It registers the user `bench`, creates a subject, then keeps 256 posts of 140 bytes in flight
on a DEALER socket, with a client id so that each post carries an idempotency key and with
`brief` set, as a web server's posts do. It exits with status 1 on the first reply that is not
a stored message (`Stored`, or `Message` from a data server that predates brief replies).
"""

import sys

import msgpack
import zmq

PROTOCOL_VERSION = 1
IN_FLIGHT = 256
CLIENT_ID = 77


def send(socket, request_id, body, client=None):
    envelope = {"v": PROTOCOL_VERSION, "id": request_id, "request": body}
    if client is not None:
        envelope["client"] = client
        envelope["brief"] = True
    socket.send_multipart([b"", msgpack.packb(envelope)])


def receive(socket):
    return msgpack.unpackb(socket.recv_multipart()[-1])["reply"]


def main():
    endpoint, count = sys.argv[1], int(sys.argv[2])
    socket = zmq.Context().socket(zmq.DEALER)
    socket.connect(endpoint)

    send(socket, 1, {"Register": {"name": "bench", "password": "bench-password"}})
    receive(socket)
    send(socket, 2, {"CreateSubject": {"title": "callgrind", "created_by": "bench"}})
    subject = receive(socket)["Subject"]["id"]

    post = {"PostMessage": {"subject": subject, "author": "bench", "text": "bench " + "x" * 134}}
    sent = received = 0
    while received < count:
        while sent < count and sent - received < IN_FLIGHT:
            send(socket, 10 + sent, post, client=CLIENT_ID)
            sent += 1
        reply = receive(socket)
        received += 1
        if "Stored" not in reply and "Message" not in reply:
            sys.exit(f"expected a stored message, got {reply!r}")


if __name__ == "__main__":
    main()
