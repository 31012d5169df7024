import Glibc
import LPMReactor
import LPMWire

/// Writes an async sequence's chunks into a pipe on the reactor, one chunk at a time, waiting
/// while more than 1 MiB is buffered (the worker reads slowly).
final class StreamPump: Sendable {
    /// `@unchecked Sendable`: `writer` is created and used only in jobs on the reactor thread.
    final class Box: @unchecked Sendable {
        var writer: StreamWriter?
        var broken = false
    }
    private let box = Box()
    private let fd: CInt
    private let reactor: Reactor.Handle

    init(writeEnd: CInt, reactor: Reactor.Handle) {
        fd = writeEnd
        self.reactor = reactor
    }

    /// Writes a chunk; `false` once the reader is gone.
    func write(_ chunk: [UInt8]) async -> Bool {
        let box = self.box, fd = self.fd
        return await withUnsafeContinuation { c in
            let ok = reactor.execute { reactor in
                let w = box.writer ?? StreamWriter(fd: fd, reactor: reactor)
                box.writer = w
                w.onError = { _ in box.broken = true }
                w.write(chunk)
                if box.broken || w.error != nil { return c.resume(returning: false) }
                if w.bufferedCount <= 1 << 20 { return c.resume(returning: true) }
                w.onDrain = { w.onDrain = {}; c.resume(returning: true) }
                w.onError = { _ in box.broken = true; c.resume(returning: false) }
            }
            if !ok { c.resume(returning: false) }
        }
    }

    /// Flushes and closes the pipe (end of file for the worker).
    func finish() async {
        let box = self.box, fd = self.fd
        await withUnsafeContinuation { (c: UnsafeContinuation<Void, Never>) in
            let ok = reactor.execute { reactor in
                let w = box.writer ?? StreamWriter(fd: fd, reactor: reactor)
                box.writer = w
                w.finish { _ in c.resume() }
            }
            if !ok { FileDescriptor.closeRaw(fd); c.resume() }
        }
    }
}
