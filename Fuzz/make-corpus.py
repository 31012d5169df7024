#!/usr/bin/env python3
"""Writes the seed corpus of FrameDecoderFuzz into Corpus/: a few valid frame streams, each file
a control byte (bits 0-4: bytes per read, 0 for all at once; bits 5-6: the mode, 0 a 4096-byte
payload limit, 1 a 64-byte limit, 2 a 1 MiB limit and zero bytes after the input; bit 7: a
one-byte first buffer) followed by the bytes a peer sends. See Sources/FrameDecoderFuzz/main.swift.
The layouts are those of docs/PROTOCOL.md."""
import os
import struct

TYPES = dict(ready=1, busy=2, request=3, response=4, ack=5, error=6, event=7, eventReply=8,
             broadcast=9, healthRequest=10, healthReport=11, softKill=12, hardKill=13, cancel=14,
             ping=15, pong=16, socketClosed=17, streamEnd=18)
DESCRIPTOR, STREAM = 1, 2


def frame(kind, ident=0, payload=b"", flags=0):
    return struct.pack("<BBBBIQ", 0x4C, 1, TYPES[kind], flags, len(payload), ident) + payload


def event(name, data):
    n = name.encode()
    return struct.pack("<H", len(n)) + n + data


request_head = bytes.fromhex("00112233445546778899aabbccddeeff") + struct.pack("<Q", 0x0102030405060708)
seeds = {
    "ping-whole": (0x00, frame("ping", 7)),
    "request-bytewise": (0x01, frame("request", 5, request_head + b"hi")),
    "event-by-7": (0x07, frame("event", 3, event("hello", b"world"))),
    "broadcast-tiny-buffer": (0x85, frame("broadcast", 0, event("", b"x" * 40))),
    "health-and-stream-end": (0x10, frame("healthReport", 2, struct.pack("<QQ", 1 << 20, 1 << 19))
                              + frame("streamEnd", 9, struct.pack("<QB", 42, 0))),
    "stream-response-partial": (0x03, frame("response", 11, b"abc", DESCRIPTOR | STREAM)
                                + frame("ack", 12)[:9]),
    "batch": (0x1F, b"".join(frame(k, i, bytes(i)) for i, k in enumerate(["ready", "response", "ack", "error", "pong"]))),
    "over-small-limit": (0x20, frame("response", 1, bytes(65))),
    # Completed by the zero bytes the target appends: a frame larger than the retained buffer.
    "large-frame": (0x40, frame("response", 1, b"")[:4] + struct.pack("<I", 300 * 1024) + bytes(8)),
}

here = os.path.dirname(os.path.abspath(__file__))
os.makedirs(os.path.join(here, "Corpus"), exist_ok=True)
for name, (control, stream) in seeds.items():
    with open(os.path.join(here, "Corpus", name), "wb") as f:
        f.write(bytes([control]) + stream)
