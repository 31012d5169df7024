#!/usr/bin/env python3
"""A LoadProcessManager worker in Python, written from docs/PROTOCOL.md (standard library only).

It is a reference for writing workers in other languages as much as a worker: every frame of
the protocol that a worker receives is handled here, in one file, with no threads.

Run it under a Supervisor (Swift):

    let script = "/path/to/Examples/PythonWorker/lpm_worker.py"
    var config = SupervisorConfiguration(executable: .init(path: "/usr/bin/env",
                                                           arguments: ["python3", script]))
    config.count = 2
    let supervisor = try Supervisor(config)
    try await supervisor.start()
    let response = try await supervisor.enqueue("hello")   // "hello" comes back

Started by hand, with no supervisor, it says so and exits with status 64.

What it does:

- request: answers with a `response` echoing the request data, after LPM_PY_DELAY_MS
  milliseconds (default 0; `--delay-ms N` does the same). Delayed answers wait on timers, so
  several requests are in hand at once. A descriptor sent with a request is closed at once
  (`socketClosed` for a socket) and the request answered with an `error`.
- event "echo": replies (when asked) with the event's data.
- event "ask": emits an event "question" to the supervisor, asking for a reply, and replies to
  the "ask" with b"answer:" followed by the supervisor's reply.
- any other event that wants a reply gets an empty reply, so that the asker is not left waiting.
- broadcast "read-fd" with a descriptor: reads up to 4096 bytes from offset 0 of the
  descriptor (a regular file: each worker gets its own descriptor, but they share the file
  offset, hence `pread`), closes it, and emits an event "fd-contents" with what it read.
- ping: `pong`. healthRequest: `healthReport` (heapTotal: the peak resident size from
  `resource`, an upper bound; heapUsed: 0, unknown: CPython does not expose its allocator's use).
- softKill: finishes the requests in hand, then exits 0. hardKill: exits 0 at once.
- cancel: drops the request (its answer is never sent).
- end of file on the channel: exits 0. A protocol violation: exits 76; a failed channel: 74.
"""

import array
import heapq
import os
import resource
import select
import socket
import struct
import sys
import time

# Frame header: magic, version, type, flags, payload length (u32), id (u64); little-endian.
HEADER = struct.Struct("<BBBBIQ")
MAGIC, VERSION = 0x4C, 1
FLAG_DESCRIPTOR, FLAG_STREAM = 0x01, 0x02

# Frame types (PROTOCOL.md, Types).
READY, BUSY, REQUEST, RESPONSE, ACK, ERROR, EVENT, EVENT_REPLY, BROADCAST = range(1, 10)
HEALTH_REQUEST, HEALTH_REPORT, SOFT_KILL, HARD_KILL, CANCEL, PING, PONG = range(10, 17)
SOCKET_CLOSED, STREAM_END = 17, 18
# Frames a supervisor may send; any other type from it is a violation.
FROM_SUPERVISOR = {REQUEST, EVENT, EVENT_REPLY, BROADCAST, HEALTH_REQUEST, SOFT_KILL, HARD_KILL,
                   CANCEL, PING, PONG}

REQUEST_HEAD_SIZE = 24  # 16-byte UUID, then createdAt (u64)
MAX_DESCRIPTORS_PER_MESSAGE = 8  # room for this many in one recvmsg's control data

EXIT_OK, EXIT_USAGE, EXIT_CHANNEL_FAILED, EXIT_VIOLATION = 0, 64, 74, 76


class Violation(Exception):
    """The supervisor broke the protocol: the worker exits with status 76."""


def event_payload(name, data):
    """Event payload: u16 name length, the UTF-8 name, then the data."""
    encoded = name.encode()[:65535]
    return struct.pack("<H", len(encoded)) + encoded + data


def parse_event_payload(payload):
    if len(payload) < 2:
        raise Violation("event payload shorter than 2 bytes")
    (n,) = struct.unpack_from("<H", payload)
    if 2 + n > len(payload):
        raise Violation("event name runs past the payload")
    return payload[2:2 + n].decode("utf-8", "replace"), bytes(payload[2 + n:])


class Worker:
    def __init__(self, fd, max_payload, delay):
        os.set_inheritable(fd, False)  # FD_CLOEXEC: nothing this worker runs inherits the channel
        self.channel = socket.socket(fileno=fd)
        # The channel arrives O_NONBLOCK. This worker waits in select() and then reads, and
        # writes with sendall(), so it makes its end blocking (the supervisor's end is its own
        # open file description and stays non-blocking). Left non-blocking, a large answer
        # would fail with EAGAIN once the socket buffer is full.
        self.channel.setblocking(True)
        self.max_payload = max_payload
        self.delay = delay
        self.incoming = bytearray()  # bytes of frames not yet complete
        self.descriptors = []        # received descriptors, in arrival order
        self.outgoing = bytearray()  # frames due, written with one send per loop iteration
        self.in_hand = {}            # request id -> request data, for requests not yet answered
        self.timers = []             # heap of (due, request id): delayed answers
        self.pending_replies = {}    # our event id -> what to do with the supervisor's reply
        self.next_event_id = 0
        self.soft_kill_requested = False

    # Sending

    def send(self, type_, id_=0, payload=b""):
        self.outgoing += HEADER.pack(MAGIC, VERSION, type_, 0, len(payload), id_) + payload

    def flush(self):
        if self.outgoing:
            try:
                self.channel.sendall(self.outgoing, socket.MSG_NOSIGNAL)
            except OSError:
                self.exit(EXIT_CHANNEL_FAILED)
            self.outgoing.clear()

    def emit(self, name, data=b"", on_reply=None):
        """Sends an event to the supervisor; `on_reply(data)` gets its reply, if one is asked for."""
        event_id = 0
        if on_reply is not None:
            self.next_event_id += 1
            event_id = self.next_event_id
            self.pending_replies[event_id] = on_reply
        self.send(EVENT, event_id, event_payload(name, data))

    def answer(self, request_id, type_, data=b""):
        if self.in_hand.pop(request_id, None) is None:
            return  # cancelled, or answered already: answer at most once
        if len(data) > self.max_payload:
            type_, data = ERROR, b"the response exceeds the largest frame"
        self.send(type_, request_id, data)

    def exit(self, code):
        if code != EXIT_CHANNEL_FAILED:
            try:
                self.channel.sendall(self.outgoing, socket.MSG_NOSIGNAL)
            except OSError:
                pass
        sys.stdout.flush()
        os._exit(code)

    # Receiving

    def receive(self):
        """One recvmsg: queues the descriptors, then handles every complete frame."""
        space = socket.CMSG_SPACE(MAX_DESCRIPTORS_PER_MESSAGE * 4)
        try:
            data, ancillary, flags, _ = self.channel.recvmsg(65536, space, socket.MSG_CMSG_CLOEXEC)
        except InterruptedError:
            return
        except OSError:
            self.exit(EXIT_CHANNEL_FAILED)
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
                self.descriptors.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise Violation("more descriptors in one message than there is room for (MSG_CTRUNC)")
        if not data:
            self.exit(EXIT_OK)  # end of file: the supervisor is gone
        self.incoming += data
        while len(self.incoming) >= HEADER.size:
            magic, version, type_, flags, length, id_ = HEADER.unpack_from(self.incoming)
            if magic != MAGIC or version != VERSION:
                raise Violation(f"bad magic {magic:#x} or version {version}")
            if type_ not in FROM_SUPERVISOR:
                raise Violation(f"frame type {type_} from the supervisor")
            if length > self.max_payload:
                raise Violation(f"payload of {length} bytes over the limit")
            if len(self.incoming) < HEADER.size + length:
                break
            payload = bytes(self.incoming[HEADER.size:HEADER.size + length])
            del self.incoming[:HEADER.size + length]
            fd = None
            if flags & (FLAG_DESCRIPTOR | FLAG_STREAM):
                if not self.descriptors:
                    raise Violation("a frame announced a descriptor that did not arrive")
                fd = self.descriptors.pop(0)
            try:
                self.handle(type_, flags, id_, payload, fd)
            finally:
                if fd is not None:
                    os.close(fd)  # no handler here keeps its descriptor
        # Descriptor rule: only the frame still being received may have one waiting.
        allowed = 0
        if self.incoming and (len(self.incoming) < HEADER.size
                              or self.incoming[3] & (FLAG_DESCRIPTOR | FLAG_STREAM)):
            allowed = 1
        if len(self.descriptors) > allowed:
            raise Violation("descriptors that no frame announced")

    def handle(self, type_, flags, id_, payload, fd):
        if type_ == REQUEST:
            if len(payload) < REQUEST_HEAD_SIZE:
                raise Violation("request shorter than its head")
            self.in_hand[id_] = payload[REQUEST_HEAD_SIZE:]  # the data, after UUID and createdAt
            if fd is not None:
                if not flags & FLAG_STREAM:
                    self.send(SOCKET_CLOSED, id_)  # we close it (after this returns)
                self.answer(id_, ERROR, b"this worker takes no descriptors with requests")
            else:
                heapq.heappush(self.timers, (time.monotonic() + self.delay, id_))
        elif type_ == CANCEL:
            self.in_hand.pop(id_, None)
        elif type_ in (EVENT, BROADCAST):
            name, data = parse_event_payload(payload)
            reply_id = id_ if type_ == EVENT else 0
            self.on_event(name, data, reply_id, fd)
        elif type_ == EVENT_REPLY:
            on_reply = self.pending_replies.pop(id_, None)
            if on_reply is not None:
                on_reply(payload)
        elif type_ == HEALTH_REQUEST:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
            self.send(HEALTH_REPORT, id_, struct.pack("<QQ", peak, 0))
        elif type_ == PING:
            self.send(PONG, id_)
        elif type_ == SOFT_KILL:
            self.soft_kill_requested = True
        elif type_ == HARD_KILL:
            self.exit(EXIT_OK)
        # PONG: nothing to do.

    def on_event(self, name, data, reply_id, fd):
        def reply(body):
            if reply_id:
                self.send(EVENT_REPLY, reply_id, body)

        if name == "echo":
            reply(data)
        elif name == "ask":
            self.emit("question", data, on_reply=lambda answer: reply(b"answer:" + answer))
        elif name == "read-fd" and fd is not None:
            self.emit("fd-contents", os.pread(fd, 4096, 0))
        else:
            reply(b"")

    # The loop

    def run(self):
        self.send(READY)
        while True:
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, request_id = heapq.heappop(self.timers)
                if request_id in self.in_hand:
                    self.answer(request_id, RESPONSE, self.in_hand[request_id])
            if self.soft_kill_requested and not self.in_hand:
                self.exit(EXIT_OK)
            self.flush()
            timeout = max(0.0, self.timers[0][0] - now) if self.timers else None
            readable, _, _ = select.select([self.channel], [], [], timeout)
            if readable:
                try:
                    self.receive()
                except Violation as v:
                    print(f"worker {os.getpid()}: protocol violation from the supervisor: {v}",
                          file=sys.stderr)
                    self.exit(EXIT_VIOLATION)


def main():
    try:
        fd = int(os.environ["LPM_CHANNEL_FD"])
        os.fstat(fd)
    except (KeyError, ValueError, OSError):
        print(f"{sys.argv[0]}: this process was not started by a Supervisor "
              "(LPM_CHANNEL_FD is not set to an open descriptor)", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    parent = os.environ.get("LPM_PARENT_PID")
    if parent and int(parent) != os.getppid():
        os._exit(EXIT_OK)  # the supervisor died before we started
    delay_ms = int(os.environ.get("LPM_PY_DELAY_MS", "0"))
    if "--delay-ms" in sys.argv:
        delay_ms = int(sys.argv[sys.argv.index("--delay-ms") + 1])
    max_payload = int(os.environ.get("LPM_MAX_FRAME", 16 << 20))
    Worker(fd, max_payload, delay_ms / 1000).run()


if __name__ == "__main__":
    main()
