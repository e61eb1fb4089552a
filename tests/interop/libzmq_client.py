"""A libzmq client (pyzmq) that talks to a running data server.

Usage: FORUM_CLUSTER_KEY=KEY libzmq_client.py REQUEST_ENDPOINT PUB_ENDPOINT

It sends a Register request on a REQ socket and checks the reply, then subscribes to the
`webserver` topic with a SUB socket, makes a change, and checks that the change arrives with
its header.
When FORUM_CLUSTER_KEY is set, the client seals every request payload with XChaCha20-Poly1305
as docs/replication.md describes, and every reply and publication must open under the same
key. Its SUB socket then sends a subscriber token first, as docs/replication.md describes. It prints one line per check and exits with status 1 on the first failure.
"""

import hashlib
import hmac
import os
import struct
import sys
import time

import msgpack
import zmq

import xchacha

PROTOCOL_VERSION = 1
CLUSTER_KEY = os.environ.get("FORUM_CLUSTER_KEY", "").strip().encode()
MESSAGE_KEY = xchacha.hkdf_sha256(
    CLUSTER_KEY, b"forum cluster key: XChaCha20-Poly1305 message key, version 1", 32
)
SUBSCRIBER_KEY = xchacha.hkdf_sha256(
    CLUSTER_KEY, b"forum cluster key: pub port subscriber token key, version 1", 32
)
NONCE_LEN = 24
TAG_LEN = 16
TOKEN_PREFIX = b"\xffsubscriber-token/1\x00"
TOKEN_LABEL = b"zmtp-guard subscriber token, version 1"


def subscriber_token():
    """Return a subscriber token: the prefix, the time in Unix milliseconds, a random nonce,
    and the HMAC-SHA256 of the label, the time and the nonce under the subscriber key."""
    time_and_nonce = struct.pack(">Q", int(time.time() * 1000)) + os.urandom(16)
    tag = hmac.new(SUBSCRIBER_KEY, TOKEN_LABEL + time_and_nonce, hashlib.sha256).digest()
    return TOKEN_PREFIX + time_and_nonce + tag


def associated_data(label, clear_frames):
    """Return the label followed by each clear frame with its 4-byte big-endian length."""
    return label + b"".join(struct.pack(">I", len(frame)) + frame for frame in clear_frames)


def seal(label, frames):
    """Encrypt the last frame when a key is set, binding the frames before it."""
    if not CLUSTER_KEY:
        return frames
    *clear, payload = frames
    nonce = os.urandom(NONCE_LEN)
    sealed = xchacha.xchacha20_poly1305_encrypt(MESSAGE_KEY, nonce, associated_data(label, clear), payload)
    return clear + [nonce + sealed]


def unseal(label, frames, encrypted=1):
    """Decrypt the last `encrypted` frames when a key is set; exit when they fail authentication.

    Several payload frames are sealed as one payload under one nonce and tag: the nonce starts
    the first of them, the tag ends the last, and the associated data also binds the length of
    each payload frame but the last.
    """
    if not CLUSTER_KEY:
        return frames
    clear, sealed = frames[:-encrypted], frames[-encrypted:]
    lengths = [len(frame) for frame in sealed]
    lengths[0] -= NONCE_LEN
    lengths[-1] -= TAG_LEN
    if min(lengths) < 0:
        sys.exit(f"a {label.decode()} message is too short to be sealed")
    data = associated_data(label, clear) + b"".join(struct.pack(">I", length) for length in lengths[:-1])
    joined = b"".join(sealed)
    payload = xchacha.xchacha20_poly1305_decrypt(MESSAGE_KEY, joined[:NONCE_LEN], data, joined[NONCE_LEN:])
    if payload is None:
        sys.exit(f"a {label.decode()} message failed authentication")
    opened, offset = [], 0
    for length in lengths:
        opened.append(payload[offset:offset + length])
        offset += length
    return clear + opened


def request(socket, request_id, body):
    payload = msgpack.packb({"v": PROTOCOL_VERSION, "id": request_id, "request": body})
    socket.send_multipart(seal(b"forum-request", [payload]))
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
    # A pub port with a key admits a subscriber only after a fresh token, sent as a
    # subscription. libzmq would send it again after a reconnect, and the port would reject
    # that copy, so a long-lived client makes a new socket instead.
    if CLUSTER_KEY:
        sub.setsockopt(zmq.SUBSCRIBE, subscriber_token())
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
            # A webserver message is [topic, header, change], with the header and the change
            # sealed together.
            frames = sub.recv_multipart()
            if len(frames) != 3:
                sys.exit(f"a webserver message has {len(frames)} frames, expected 3")
            topic, header, change = unseal(b"forum-publication", frames, encrypted=2)
            header = msgpack.unpackb(header)
            change = msgpack.unpackb(change)
            if topic != b"webserver" or header.get("v") != PROTOCOL_VERSION or change.get("v") != PROTOCOL_VERSION:
                sys.exit(f"unexpected publication: {topic!r} {header!r} {change!r}")
            print("SUB received on", topic.decode(), "at position", header["position"], ":", change["change"]["kind"])
            return
    sys.exit("no change arrived on the webserver topic within 10 s")


if __name__ == "__main__":
    main()
