#!/usr/bin/env python3
"""A LoadProcessManager worker in Python, written from docs/PROTOCOL.md (standard library only).

One file, two uses:

- a module: `from lpm_worker import connect` gives a `Worker` with the same feature set as the C
  header `Examples/CWorker/lpm_worker.h` (requests, answers, events both ways, descriptors,
  response streams, health, cancel, busy/ready, soft and hard kill, timers), on one thread;
- a program: run as a script, it is the example worker the conformance tests run, and behaves
  exactly as `Examples/CWorker/echo_worker.c` does (see `main` below).

    import lpm_worker

    w = lpm_worker.connect()              # descriptor 3, or exit 64 with a message
    w.on_request(lambda w, req: w.respond(req.id, req.data))
    w.ready()
    w.run()                               # exits 0 at end of file or after a soft kill

Run it under a Supervisor (Swift):

    let script = "/path/to/Examples/PythonWorker/lpm_worker.py"
    var config = SupervisorConfiguration(executable: .init(path: "/usr/bin/env",
                                                           arguments: ["python3", script]))

Descriptors that come with a request or an event (`req.fd`, `ev.fd`) belong to the handler
while it runs: to keep one, take it and set the attribute to None; otherwise it is closed when
the handler returns (and, for a request's socket, the supervisor hears `socketClosed`).

This worker keeps its channel *blocking* (the protocol allows either): it waits in `select`,
then reads, and writes whole frames with `sendall`. The C header shows the non-blocking way.

Exit statuses: 0 at end of file, after a soft kill or a hard-kill notice; 64 when not started
by a supervisor; 74 when the channel fails; 76 when the supervisor breaks the protocol.
"""

import array
import errno
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

REQUEST_HEAD_SIZE = 24  # 16-byte UUID, then createdAt (u64)
MAX_DESCRIPTORS_PER_MESSAGE = 8  # room for this many in one recvmsg's control data
DEFAULT_MAX_PAYLOAD = 16 << 20
MAX_PAYLOAD_LIMIT = 1 << 30

EXIT_OK, EXIT_USAGE, EXIT_CHANNEL_FAILED, EXIT_VIOLATION = 0, 64, 74, 76


class Violation(Exception):
    """The supervisor broke the protocol: the worker exits with status 76."""


class NotStartedBySupervisor(Exception):
    """LPM_CHANNEL_FD does not name an open descriptor (or LPM_MAX_FRAME is invalid)."""


class Request:
    """A request: `id` (answer with it), `uuid` (16 bytes, RFC 9562 order), `created_at` (ns on
    the supervisor's CLOCK_MONOTONIC), `data`, `fd` (None, or a descriptor sent with it) and
    `is_stream` (fd is a stream's read end, to be read to end of file; else a socket)."""

    __slots__ = ("id", "uuid", "created_at", "data", "fd", "is_stream")

    def __init__(self, id_, uuid, created_at, data, fd, is_stream):
        self.id, self.uuid, self.created_at = id_, uuid, created_at
        self.data, self.fd, self.is_stream = data, fd, is_stream


class Event:
    """An event or broadcast: `name`, `data`, `reply_id` (non-zero: the supervisor waits for
    `reply(reply_id, ...)`), `is_broadcast`, `fd` (None, or a descriptor sent with it)."""

    __slots__ = ("name", "data", "reply_id", "is_broadcast", "fd")

    def __init__(self, name, data, reply_id, is_broadcast, fd):
        self.name, self.data, self.reply_id = name, data, reply_id
        self.is_broadcast, self.fd = is_broadcast, fd


def _event_payload(name, data):
    """Event payload: u16 name length, the UTF-8 name (cut at 65,535 bytes), then the data."""
    encoded = name.encode()[:65535]
    return struct.pack("<H", len(encoded)) + encoded + bytes(data)


def _parse_event_payload(payload):
    if len(payload) < 2:
        raise Violation("event payload shorter than 2 bytes")
    (n,) = struct.unpack_from("<H", payload)
    if 2 + n > len(payload):
        raise Violation("event name runs past the payload")
    return payload[2:2 + n].decode("utf-8", "replace"), bytes(payload[2 + n:])


def _close(fd):
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class Worker:
    """The worker side of one channel. Every method runs on the thread that calls `run`/`poll`."""

    def __init__(self):
        try:
            fd = int(os.environ["LPM_CHANNEL_FD"])
            os.fstat(fd)
        except (KeyError, ValueError, OSError):
            raise NotStartedBySupervisor(
                "this process was not started by a Supervisor (LPM_CHANNEL_FD is not set to an open descriptor)")
        try:
            self.max_payload = int(os.environ.get("LPM_MAX_FRAME", DEFAULT_MAX_PAYLOAD))
        except ValueError:
            self.max_payload = -1
        if not 0 <= self.max_payload <= MAX_PAYLOAD_LIMIT:
            raise NotStartedBySupervisor(f"LPM_MAX_FRAME={os.environ['LPM_MAX_FRAME']} is not a size from 0 to 1 GiB")
        # The supervisor died before this worker started: nothing to do.
        parent = os.environ.get("LPM_PARENT_PID")
        if parent and parent.isdigit() and int(parent) != os.getppid():
            os._exit(EXIT_OK)
        os.set_inheritable(fd, False)  # FD_CLOEXEC: nothing this worker runs inherits the channel
        self.channel = socket.socket(fileno=fd)
        # The channel arrives O_NONBLOCK; this worker waits in select() and writes whole frames,
        # so it makes its end blocking (the flag is this end's own: the supervisor's is unchanged).
        self.channel.setblocking(True)
        slot = os.environ.get("LPM_WORKER_SLOT", "")
        self.slot = int(slot) if slot.isdigit() else -1
        self._incoming = bytearray()  # bytes of frames not yet complete
        self._descriptors = []        # received descriptors, in arrival order
        self._outgoing = []           # (frame bytes, descriptor or None), written once per iteration
        self._in_hand = {}            # request id -> True once answered with a stream not ended
        self._pending_replies = {}    # our event id -> the function that takes the reply
        self._next_event_id = 0
        self._timers = []             # heap of (due, sequence, function)
        self._cancelled_timers = set()
        self._timer_sequence = 0
        self._state = "starting"
        self._soft_kill_requested = False
        self._soft_kill_running = False
        self._exiting = False
        self._request_handler = lambda w, req: w.fail(req.id, "this worker has no request handler")
        self._event_handlers = {}
        self._any_event_handler = None
        self._cancel_handler = None
        self._soft_kill_handler = None
        self._hard_kill_handler = None
        self._health_handler = None

    # Handlers

    def on_request(self, fn):
        """`fn(worker, request)` for each request; answer now or later, once. An exception out
        of it fails the request (an `error` with the exception's text), if not answered yet."""
        self._request_handler = fn

    def on(self, name, fn):
        """`fn(worker, event)` for events named `name`; `name` None: every other event."""
        if name is None:
            self._any_event_handler = fn
        else:
            self._event_handlers[name] = fn

    def on_cancel(self, fn):
        """`fn(worker, request_id)` when the supervisor gives up on a request in hand."""
        self._cancel_handler = fn

    def on_soft_kill(self, fn):
        """`fn(worker)` once nothing is in hand after a soft kill; call `exit(0)` when done."""
        self._soft_kill_handler = fn

    def on_hard_kill(self, fn):
        """`fn(worker)` on the hard-kill notice (a SIGKILL follows); the worker then exits 0."""
        self._hard_kill_handler = fn

    def on_health(self, fn):
        """`fn(worker) -> (heap_total, heap_used)` in bytes, 0 for unknown. The default reports
        the peak resident size as heap_total (an upper bound) and 0: CPython does not say."""
        self._health_handler = fn

    # State

    def ready(self):
        """Takes requests (again, after `busy`). Sends nothing when already ready."""
        if self._state != "ready":
            self._state = "ready"
            self._send(READY)
            self._maybe_finish_soft_kill()

    def busy(self):
        """Takes no new requests until `ready`."""
        if self._state != "busy":
            self._state = "busy"
            self._send(BUSY)

    def in_hand(self):
        """How many requests are received and not answered (a stream counts until it ends)."""
        return len(self._in_hand)

    # Answers

    def respond(self, request_id, data=b""):
        """Answers with data. False when the request is not in hand (answered, cancelled)."""
        return self._answer(request_id, RESPONSE, data)

    def ack(self, request_id):
        return self._answer(request_id, ACK, b"")

    def fail(self, request_id, message):
        return self._answer(request_id, ERROR, message.encode())

    def respond_stream(self, request_id, data=b""):
        """Answers with data and a stream: returns the write end (a blocking socket) of a
        socketpair whose other end goes to the supervisor, or None. Write to it, then call
        `stream_end`; the request stays in hand until then."""
        if self._in_hand.get(request_id, True):
            return None
        if len(data) > self.max_payload:
            self._answer(request_id, RESPONSE, data)  # sent as an error saying why
            return None
        read_end, write_end = socket.socketpair()  # close-on-exec, as Python makes every socket
        self._in_hand[request_id] = True
        self._send(RESPONSE, request_id, data, flags=FLAG_DESCRIPTOR | FLAG_STREAM, fd=read_end.detach())
        # Out before the caller writes the stream: the supervisor reads the stream only once it
        # has the response.
        self.flush()
        return write_end

    def stream_end(self, request_id, stream, count, ok=True):
        """Closes `stream` (the write end) and ends the stream: `count` bytes, complete or not."""
        stream.close()
        if not self._in_hand.get(request_id, False):
            return False
        del self._in_hand[request_id]
        self._send(STREAM_END, request_id, struct.pack("<QB", count, 0 if ok else 1))
        self._maybe_finish_soft_kill()
        return True

    def close_socket(self, request_id, fd):
        """Closes a socket kept from a request and tells the supervisor (socketClosed)."""
        _close(fd)
        self._send(SOCKET_CLOSED, request_id)

    def _answer(self, request_id, type_, data):
        if self._in_hand.get(request_id, True):
            return False  # not in hand, or answered with a stream: answer at most once
        del self._in_hand[request_id]
        if len(data) > self.max_payload:
            type_ = ERROR
            data = f"the response of {len(data)} bytes exceeds the largest frame ({self.max_payload} bytes)".encode()
        self._send(type_, request_id, data)
        self._maybe_finish_soft_kill()
        return True

    # Events

    def emit(self, name, data=b"", on_reply=None):
        """Sends an event; `on_reply(worker, data)` gets the supervisor's reply, if given.
        False when it does not fit in a frame."""
        payload = _event_payload(name, data)
        if len(payload) > self.max_payload:
            return False
        event_id = 0
        if on_reply is not None:
            self._next_event_id += 1
            event_id = self._next_event_id
            self._pending_replies[event_id] = on_reply
        self._send(EVENT, event_id, payload)
        return True

    def reply(self, reply_id, data=b""):
        """Replies to an event the supervisor sent with a reply id (`event.reply_id`)."""
        if reply_id == 0 or len(data) > self.max_payload:
            return False
        self._send(EVENT_REPLY, reply_id, data)
        return True

    # Timers

    def call_later(self, delay, fn):
        """Runs `fn(worker)` once, `delay` seconds from now; returns a handle for `cancel_timer`."""
        self._timer_sequence += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._timer_sequence, fn))
        return self._timer_sequence

    def cancel_timer(self, handle):
        self._cancelled_timers.add(handle)

    def _run_timers(self):
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, handle, fn = heapq.heappop(self._timers)
            if handle in self._cancelled_timers:
                self._cancelled_timers.discard(handle)
            else:
                fn(self)

    # Sending

    def _send(self, type_, id_=0, payload=b"", flags=0, fd=None):
        self._outgoing.append((HEADER.pack(MAGIC, VERSION, type_, flags, len(payload), id_) + bytes(payload), fd))

    def flush(self):
        """Writes every frame due, in as few calls as possible: bytes up to a frame that carries
        a descriptor in one sendall; that frame starts a sendmsg of its own, so that the
        descriptor arrives with its first byte."""
        pending = bytearray()
        try:
            for frame, fd in self._outgoing:
                if fd is None:
                    pending += frame
                    continue
                if pending:
                    self.channel.sendall(pending, socket.MSG_NOSIGNAL)
                    pending.clear()
                try:
                    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
                    sent = self.channel.sendmsg([frame], rights, socket.MSG_NOSIGNAL)
                    if sent < len(frame):
                        self.channel.sendall(frame[sent:], socket.MSG_NOSIGNAL)
                finally:
                    _close(fd)
            if pending:
                self.channel.sendall(pending, socket.MSG_NOSIGNAL)
        except (BrokenPipeError, ConnectionResetError):
            self._outgoing.clear()
            if not self._exiting:
                self.exit(EXIT_OK)  # the supervisor is gone
        except OSError as e:
            self._outgoing.clear()
            if not self._exiting:
                print(f"worker {os.getpid()}: the channel failed: send: {e}", file=sys.stderr)
                self.exit(EXIT_CHANNEL_FAILED)
        self._outgoing.clear()

    def exit(self, code):
        """Writes everything queued, then exits the process with `code`."""
        if not self._exiting:
            self._exiting = True
            if code != EXIT_CHANNEL_FAILED:
                self.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    # Receiving

    def _receive(self):
        """One recvmsg: queues the descriptors, then handles every complete frame."""
        space = socket.CMSG_SPACE(MAX_DESCRIPTORS_PER_MESSAGE * 4)
        try:
            data, ancillary, msg_flags, _ = self.channel.recvmsg(65536, space, socket.MSG_CMSG_CLOEXEC)
        except InterruptedError:
            return
        except ConnectionResetError:
            # The supervisor closed its end with frames of ours unread: gone, as at end of file.
            self.exit(EXIT_OK)
        except OSError as e:
            print(f"worker {os.getpid()}: the channel failed: recvmsg: {e}", file=sys.stderr)
            self.exit(EXIT_CHANNEL_FAILED)
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
                self._descriptors.extend(fds)
        if msg_flags & socket.MSG_CTRUNC:
            raise Violation("more descriptors in one message than there is room for (MSG_CTRUNC)")
        if not data:
            self.exit(EXIT_OK)  # end of file: the supervisor is gone
        self._incoming += data
        while len(self._incoming) >= HEADER.size:
            magic, version, type_, flags, length, id_ = HEADER.unpack_from(self._incoming)
            if magic != MAGIC:
                raise Violation(f"bad magic byte {magic:#x}")
            if version != VERSION:
                raise Violation(f"unsupported protocol version {version}")
            if length > self.max_payload:
                raise Violation(f"a frame's payload of {length} bytes exceeds LPM_MAX_FRAME")
            if len(self._incoming) < HEADER.size + length:
                break
            payload = bytes(self._incoming[HEADER.size:HEADER.size + length])
            del self._incoming[:HEADER.size + length]
            fd = None
            if flags & (FLAG_DESCRIPTOR | FLAG_STREAM):
                if not self._descriptors:
                    raise Violation("a frame announced a descriptor that did not arrive")
                fd = self._descriptors.pop(0)
            try:
                fd = self._handle(type_, flags, id_, payload, fd)
            finally:
                _close(fd)  # a descriptor nobody kept
        # Descriptor rule: only the frame still being received may have its descriptor here.
        allowed = 0
        if self._incoming and (len(self._incoming) < HEADER.size
                               or self._incoming[3] & (FLAG_DESCRIPTOR | FLAG_STREAM)):
            allowed = 1
        if len(self._descriptors) > allowed:
            raise Violation("descriptors arrived that no frame announced")

    def _handle(self, type_, flags, id_, payload, fd):
        """Handles one frame; returns the descriptor left for the caller to close, if any."""
        if type_ == REQUEST:
            if len(payload) < REQUEST_HEAD_SIZE:
                raise Violation("request shorter than its 24-byte head")
            (created_at,) = struct.unpack_from("<Q", payload, 16)
            request = Request(id_, payload[:16], created_at, payload[REQUEST_HEAD_SIZE:], fd,
                              fd is not None and bool(flags & FLAG_STREAM))
            self._in_hand.setdefault(id_, False)
            try:
                self._request_handler(self, request)
            except Exception as e:  # a failing handler fails its request, not the worker
                self.fail(id_, f"{type(e).__name__}: {e}")
            if request.fd is not None:
                if request.is_stream:
                    _close(request.fd)
                else:
                    self.close_socket(id_, request.fd)
            return None
        if type_ in (EVENT, BROADCAST):
            name, data = _parse_event_payload(payload)
            event = Event(name, data, id_ if type_ == EVENT else 0, type_ == BROADCAST, fd)
            handler = self._event_handlers.get(name, self._any_event_handler)
            if handler is not None:
                handler(self, event)
            return event.fd
        if type_ == EVENT_REPLY:
            on_reply = self._pending_replies.pop(id_, None)
            if on_reply is not None:
                on_reply(self, payload)  # a reply to an id not awaited is ignored
        elif type_ == HEALTH_REQUEST:
            if self._health_handler is not None:
                total, used = self._health_handler(self)
            else:
                total, used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 0  # KiB on Linux
            self._send(HEALTH_REPORT, id_, struct.pack("<QQ", total, used))
        elif type_ == SOFT_KILL:
            self._soft_kill_requested = True
            self._maybe_finish_soft_kill()
        elif type_ == HARD_KILL:
            _close(fd)
            if self._hard_kill_handler is not None:
                self._hard_kill_handler(self)
            self.exit(EXIT_OK)
        elif type_ == CANCEL:
            if self._in_hand.pop(id_, None) is not None:
                if self._cancel_handler is not None:
                    self._cancel_handler(self, id_)
                self._maybe_finish_soft_kill()
        elif type_ == PING:
            self._send(PONG, id_)
        elif type_ == PONG:
            pass
        else:
            raise Violation(f"a supervisor may not send frames of type {type_}")
        return fd

    def _maybe_finish_soft_kill(self):
        if (not self._soft_kill_requested or self._soft_kill_running or self._in_hand
                or self._state == "busy"):
            return
        if self._soft_kill_handler is not None:
            self._soft_kill_running = True
            self._soft_kill_handler(self)
        else:
            self.exit(EXIT_OK)

    # The loop

    def poll(self, timeout=None):
        """One iteration: waits up to `timeout` seconds (None: until something happens) for
        frames or the next timer, handles them, and writes what is due."""
        try:
            self._run_timers()
            self._maybe_finish_soft_kill()
            self.flush()
            if self._timers:
                wait = max(0.0, self._timers[0][0] - time.monotonic())
                timeout = wait if timeout is None else min(timeout, wait)
            readable, _, _ = select.select([self.channel], [], [], timeout)
            if readable:
                self._receive()
            self._run_timers()
            self._maybe_finish_soft_kill()
            self.flush()
        except Violation as v:
            print(f"worker {os.getpid()}: protocol violation from the supervisor: {v}", file=sys.stderr)
            self.exit(EXIT_VIOLATION)

    def run(self):
        """`poll` for ever: the worker exits from inside it."""
        while True:
            self.poll()


def connect():
    """A `Worker` on the channel the supervisor passed, or the reason on stderr and exit 64."""
    try:
        return Worker()
    except NotStartedBySupervisor as e:
        print(f"{sys.argv[0]}: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


# The example worker: the same behaviour as Examples/CWorker/echo_worker.c.
#
# Requests:
# - plain: answered with their own data, after --delay-ms N milliseconds (default 0, or
#   LPM_EXAMPLE_DELAY_MS); delayed answers wait on timers, so several requests are in hand.
#   Data "stream N" is answered with the data "stream" and a response stream of N bytes, byte i
#   being i % 251.
# - with a socket: the request data is written to the socket, which is then closed (the
#   supervisor hears socketClosed), and the request answered with its data.
# - with a stream: the stream is read to end of file, and the request answered with its bytes.
# - cancelled: an event "cancelled" carries the request's data to the supervisor.
# Events:
# - "echo": replies with the event's data.
# - "ask": asks the supervisor back (event "question", with the data, wanting a reply), and
#   replies to the "ask" with "answer:" and the supervisor's reply.
# - "busy" / "ready": says busy or ready, replies "busy" / "ready".
# - any other event that wants a reply gets an empty one.
# - broadcast "read-fd" with a descriptor: reads up to 4096 bytes from offset 0 (pread: every
#   worker's copy shares one file offset) and emits "fd-contents" with them.
# - broadcast "write-fd" with a descriptor: writes "<slot> <data>\n" to it in one write.
# Soft kill: once nothing is in hand, emits "bye" with its slot number, then exits 0.

def _write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


def _read_all(fd):
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            select.select([fd], [], [])
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _answer(w, request_id, data):
    if data.startswith(b"stream "):
        count = int(data[7:] or b"0")
        stream = w.respond_stream(request_id, b"stream")
        if stream is None:
            return
        pattern = bytes(i % 251 for i in range(251)) * 18  # any 4096 bytes of it from 0..250 on
        written, ok = 0, True
        try:
            while written < count:
                start = written % 251
                chunk = pattern[start:start + min(4096, count - written)]
                stream.sendall(chunk, socket.MSG_NOSIGNAL)
                written += len(chunk)
        except OSError:
            ok = False
        w.stream_end(request_id, stream, written, ok)
        return
    w.respond(request_id, data)


def main():
    delay_ms = int(os.environ.get("LPM_EXAMPLE_DELAY_MS", "0"))
    if "--delay-ms" in sys.argv[:-1]:
        delay_ms = int(sys.argv[sys.argv.index("--delay-ms") + 1])
    w = connect()
    delayed = {}  # request id -> (timer, data)

    def on_request(w, req):
        if req.fd is not None and not req.is_stream:
            _write_all(req.fd, req.data)  # the library closes the socket and says so afterwards
            w.respond(req.id, req.data)
        elif req.fd is not None:
            w.respond(req.id, _read_all(req.fd))
        elif delay_ms <= 0:
            _answer(w, req.id, req.data)
        else:
            def later(w, request_id=req.id, data=req.data):
                del delayed[request_id]
                _answer(w, request_id, data)
            delayed[req.id] = (w.call_later(delay_ms / 1000, later), req.data)

    def on_cancel(w, request_id):
        entry = delayed.pop(request_id, None)
        if entry is not None:
            w.cancel_timer(entry[0])
            w.emit("cancelled", entry[1])

    def on_ask(w, ev):
        w.emit("question", ev.data, on_reply=lambda w, answer: w.reply(ev.reply_id, b"answer:" + answer))

    def on_busy(w, ev):
        w.busy()
        w.reply(ev.reply_id, b"busy")

    def on_ready(w, ev):
        w.ready()
        w.reply(ev.reply_id, b"ready")

    def on_read_fd(w, ev):
        if ev.fd is not None:
            w.emit("fd-contents", os.pread(ev.fd, 4096, 0))

    def on_write_fd(w, ev):
        if ev.fd is not None:
            _write_all(ev.fd, f"{w.slot} ".encode() + ev.data + b"\n")

    def on_other(w, ev):
        if ev.reply_id:
            w.reply(ev.reply_id, b"")

    def on_soft_kill(w):
        w.emit("bye", str(w.slot).encode())
        w.exit(EXIT_OK)

    w.on_request(on_request)
    w.on_cancel(on_cancel)
    w.on("echo", lambda w, ev: w.reply(ev.reply_id, ev.data))
    w.on("ask", on_ask)
    w.on("busy", on_busy)
    w.on("ready", on_ready)
    w.on("read-fd", on_read_fd)
    w.on("write-fd", on_write_fd)
    w.on(None, on_other)
    w.on_soft_kill(on_soft_kill)
    w.ready()
    w.run()


if __name__ == "__main__":
    main()
