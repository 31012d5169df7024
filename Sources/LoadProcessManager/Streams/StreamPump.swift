import Glibc
import LPMReactor
import LPMWire
import Synchronization

/// Writes an async sequence's chunks into a socket (one end of a socket pair, the worker has the
/// other) on the reactor, one chunk at a time, waiting
/// while more than 1 MiB is buffered (the worker reads slowly), and holds the request's answer.
///
/// The write end is closed exactly once, by whichever comes first: ``finish()`` (end of file
/// for the worker), a failed write (the worker went away), or the request's answer
/// (``answered(_:)``: nobody reads the rest). Closing it breaks every reference between the
/// pump's state and its writer, so nothing outlives the request.
final class StreamPump: Sendable {
    typealias Answer = Result<WorkerResponse, SupervisorError>

    /// `@unchecked Sendable`: used only on the reactor thread, with one exception: the answer to
    /// a request the reactor refused (it was closed) ends it on the caller's thread, and then
    /// no job of the pump ever runs (they are submitted after the request, to the closed reactor).
    final class Box: @unchecked Sendable {
        let fd: CInt
        /// Made by the first write; it then owns `fd`.
        private var writer: StreamWriter?
        /// The write or finish in progress: resumed once, by the drain (`true`) or ``end()``.
        private var waiting: UnsafeContinuation<Bool, Never>?
        private var ended = false

        init(fd: CInt) { self.fd = fd }

        /// The writer, made on first use; `nil` once ended.
        func writer(on reactor: Reactor) -> StreamWriter? {
            if ended { return nil }
            if let w = writer { return w }
            let w = StreamWriter(fd: fd, reactor: reactor, isSocket: true)
            // Weak: the box holds the writer, and a writer whose registration the reactor drops
            // (it closed) must not keep the two alive in a cycle.
            w.onDrain = { [weak self] in self?.resume(true) }
            w.onError = { [weak self] _ in self?.end() }
            writer = w
            return w
        }

        /// Parks `c` until the drain or the end resumes it.
        func wait(_ c: UnsafeContinuation<Bool, Never>) {
            precondition(waiting == nil, "a stream pump writes one chunk at a time")
            waiting = c
        }

        func resume(_ ok: Bool) {
            guard let c = waiting else { return }
            waiting = nil
            c.resume(returning: ok)
        }

        /// Closes the write end (if not yet), drops the writer and its closures, and resumes the
        /// call in progress with `false`.
        func end() {
            if !ended {
                ended = true
                if let w = writer {
                    writer = nil
                    w.onDrain = {}
                    w.onError = { _ in }
                    w.close()
                } else {
                    FileDescriptor.closeRaw(fd)
                }
            }
            resume(false)
        }
    }

    private let box: Box
    private let reactor: Reactor.Handle
    /// The request's answer, or the call waiting for it: whichever comes first.
    private let answer = Mutex<(result: Answer?, waiter: UnsafeContinuation<Answer, Never>?)>((nil, nil))

    init(writeEnd: CInt, reactor: Reactor.Handle) {
        box = Box(fd: writeEnd)
        self.reactor = reactor
    }

    /// Writes a chunk; `false` once the stream has ended (the reader is gone, the request was
    /// answered, the reactor is closed).
    func write(_ chunk: [UInt8]) async -> Bool {
        let box = self.box
        return await withUnsafeContinuation { c in
            let ok = reactor.execute { reactor in
                guard let w = box.writer(on: reactor) else { return c.resume(returning: false) }
                box.wait(c)
                w.write(chunk)  // a failed write ends the box, which resumes `c`
                if w.bufferedCount <= 1 << 20 { box.resume(true) }
            }
            if !ok { c.resume(returning: false) }
        }
    }

    /// Flushes and closes the socket (end of file for the worker).
    func finish() async {
        let box = self.box
        _ = await withUnsafeContinuation { (c: UnsafeContinuation<Bool, Never>) in
            let ok = reactor.execute { reactor in
                box.wait(c)
                // No writer: nothing was written (or it has ended): closing is all there is to do.
                guard let w = box.writer(on: reactor) else { return box.end() }
                w.finish { [weak box] _ in box?.end() }
            }
            // The reactor is closed: the request was answered, which ended the box.
            if !ok { c.resume(returning: false) }
        }
    }

    /// The request's answer: ends the stream (if the worker did not read it all, nobody will)
    /// and hands the answer to ``response()``. On the reactor thread, or on the caller's when
    /// the request was refused there (see ``Box``).
    func answered(_ result: Answer) {
        box.end()
        let waiter = answer.withLock { s -> UnsafeContinuation<Answer, Never>? in
            guard let w = s.waiter else { s.result = result; return nil }
            s.waiter = nil
            return w
        }
        waiter?.resume(returning: result)
    }

    /// Waits for the request's answer.
    func response() async -> Answer {
        await withUnsafeContinuation { c in
            let ready = answer.withLock { s -> Answer? in
                if let r = s.result { return r }
                s.waiter = c
                return nil
            }
            if let ready { c.resume(returning: ready) }
        }
    }
}
