// The prefork server's worker: reads an HTTP request from the socket it is handed, answers
// with a small response naming its pid, and closes the connection.
import Glibc
import LPMReactor
import LoadProcessManagerWorker

let worker = Worker.connect()
let body = Array("hello from worker \(getpid())\n".utf8)
let response = Array("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8) + body

worker.onRequest { request in
    guard request.hasSocket, let fd = request.socket else { return request.fail("expected a socket") }
    // Read the request head on the reactor (the socket is non-blocking), then answer.
    let reader = Worker.InputStream(fd: dup(fd), reactor: worker.reactor)
    var head: [UInt8] = []
    func answer() {
        reader.close()
        _ = response.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        request.closeSocket()
        request.ack()
    }
    reader.onChunk = { chunk in
        head += chunk
        if head.count >= 4 && head.suffix(4) == [13, 10, 13, 10] || head.count > 64 * 1024 { answer() }
    }
    reader.onEnd = { _ in request.closeSocket(); request.ack() }
    reader.resume()
}
worker.ready()
worker.run()
