"""XChaCha20-Poly1305 and HKDF-SHA256 in pure Python, for the interop client.

The construction follows RFC 8439 (ChaCha20, Poly1305 and their AEAD) and
draft-irtf-cfrg-xchacha-03 (HChaCha20 and the 24-byte nonce). It is slow and not constant
time, which is acceptable for a test client, and it lets the client run on a Python that has
only pyzmq and msgpack installed. `python3 xchacha.py` checks the RFC test vectors.
"""

import hashlib
import hmac
import struct

MASK32 = 0xFFFFFFFF
CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
POLY1305_PRIME = (1 << 130) - 5


def _rotate(value, count):
    return ((value << count) & MASK32) | (value >> (32 - count))


def _quarter_round(state, a, b, c, d):
    state[a] = (state[a] + state[b]) & MASK32
    state[d] = _rotate(state[d] ^ state[a], 16)
    state[c] = (state[c] + state[d]) & MASK32
    state[b] = _rotate(state[b] ^ state[c], 12)
    state[a] = (state[a] + state[b]) & MASK32
    state[d] = _rotate(state[d] ^ state[a], 8)
    state[c] = (state[c] + state[d]) & MASK32
    state[b] = _rotate(state[b] ^ state[c], 7)


def _rounds(state):
    """Apply the 20 ChaCha rounds (10 double rounds) to a 16-word state in place."""
    for _ in range(10):
        _quarter_round(state, 0, 4, 8, 12)
        _quarter_round(state, 1, 5, 9, 13)
        _quarter_round(state, 2, 6, 10, 14)
        _quarter_round(state, 3, 7, 11, 15)
        _quarter_round(state, 0, 5, 10, 15)
        _quarter_round(state, 1, 6, 11, 12)
        _quarter_round(state, 2, 7, 8, 13)
        _quarter_round(state, 3, 4, 9, 14)


def _initial_state(key, counter_and_nonce):
    return list(CONSTANTS) + list(struct.unpack("<8I", key)) + list(counter_and_nonce)


def chacha20_block(key, counter, nonce):
    """Return one 64-byte ChaCha20 block (RFC 8439 section 2.3) for a 12-byte nonce."""
    initial = _initial_state(key, (counter,) + struct.unpack("<3I", nonce))
    state = list(initial)
    _rounds(state)
    return struct.pack("<16I", *((word + start) & MASK32 for word, start in zip(state, initial)))


def hchacha20(key, nonce16):
    """Return the 32-byte HChaCha20 subkey (draft-irtf-cfrg-xchacha-03 section 2.2)."""
    state = _initial_state(key, struct.unpack("<4I", nonce16))
    _rounds(state)
    return struct.pack("<8I", *(state[0:4] + state[12:16]))


def chacha20_xor(key, counter, nonce, data):
    """Encrypt or decrypt `data` with ChaCha20 starting at block `counter`."""
    output = bytearray()
    for offset in range(0, len(data), 64):
        block = chacha20_block(key, counter + offset // 64, nonce)
        chunk = data[offset:offset + 64]
        output.extend(byte ^ key_byte for byte, key_byte in zip(chunk, block))
    return bytes(output)


def poly1305(one_time_key, message):
    """Return the 16-byte Poly1305 tag (RFC 8439 section 2.5)."""
    r = int.from_bytes(one_time_key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(one_time_key[16:], "little")
    accumulator = 0
    for offset in range(0, len(message), 16):
        block = message[offset:offset + 16] + b"\x01"
        accumulator = (accumulator + int.from_bytes(block, "little")) * r % POLY1305_PRIME
    return ((accumulator + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def _pad16(data):
    return b"\x00" * (-len(data) % 16)


def _tag(key, nonce12, associated_data, ciphertext):
    one_time_key = chacha20_block(key, 0, nonce12)[:32]
    mac_data = (
        associated_data + _pad16(associated_data) + ciphertext + _pad16(ciphertext)
        + struct.pack("<QQ", len(associated_data), len(ciphertext))
    )
    return poly1305(one_time_key, mac_data)


def chacha20_poly1305_encrypt(key, nonce12, associated_data, plaintext):
    """Return the ciphertext followed by the tag (RFC 8439 section 2.8)."""
    ciphertext = chacha20_xor(key, 1, nonce12, plaintext)
    return ciphertext + _tag(key, nonce12, associated_data, ciphertext)


def chacha20_poly1305_decrypt(key, nonce12, associated_data, sealed):
    """Return the plaintext, or None when the tag does not match."""
    ciphertext, tag = sealed[:-16], sealed[-16:]
    if len(sealed) < 16 or not hmac.compare_digest(tag, _tag(key, nonce12, associated_data, ciphertext)):
        return None
    return chacha20_xor(key, 1, nonce12, ciphertext)


def _xchacha_parameters(key, nonce24):
    return hchacha20(key, nonce24[:16]), b"\x00" * 4 + nonce24[16:]


def xchacha20_poly1305_encrypt(key, nonce24, associated_data, plaintext):
    """Return the ciphertext followed by the tag, under a 24-byte nonce."""
    subkey, nonce12 = _xchacha_parameters(key, nonce24)
    return chacha20_poly1305_encrypt(subkey, nonce12, associated_data, plaintext)


def xchacha20_poly1305_decrypt(key, nonce24, associated_data, sealed):
    """Return the plaintext, or None when the tag does not match."""
    subkey, nonce12 = _xchacha_parameters(key, nonce24)
    return chacha20_poly1305_decrypt(subkey, nonce12, associated_data, sealed)


def hkdf_sha256(input_key, info, length):
    """Return HKDF-SHA256 output (RFC 5869) with an empty salt."""
    pseudorandom_key = hmac.new(b"\x00" * 32, input_key, hashlib.sha256).digest()
    output, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(pseudorandom_key, block + info + bytes([counter]), hashlib.sha256).digest()
        output += block
    return output[:length]


def _self_test():
    # RFC 8439 section 2.8.2.
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    associated_data = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
        b"future, sunscreen would be it."
    )
    sealed = chacha20_poly1305_encrypt(key, nonce, associated_data, plaintext)
    assert sealed[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691", sealed[-16:].hex()
    assert chacha20_poly1305_decrypt(key, nonce, associated_data, sealed) == plaintext
    # draft-irtf-cfrg-xchacha-03 section 2.2.1.
    subkey = hchacha20(bytes(range(32)), bytes.fromhex("000000090000004a0000000031415927"))
    assert subkey.hex() == "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc", subkey.hex()
    print("ok")


if __name__ == "__main__":
    _self_test()
