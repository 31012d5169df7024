// Codable conveniences over the byte payloads, for both sides. JSONEncoder/JSONDecoder come from
// FoundationEssentials where the toolchain has it (a worker then starts without loading all of
// Foundation), else from Foundation; the core modules import neither.
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
@_exported import LoadProcessManager
@_exported import LoadProcessManagerWorker

extension Supervisor {
    /// Queues `value` encoded as JSON and waits for the answer.
    /// - Throws: `EncodingError`, or ``/LoadProcessManager/SupervisorError``.
    public func enqueue<Value: Encodable>(json value: Value, options: RequestOptions = RequestOptions(),
                                          encoder: JSONEncoder = JSONEncoder()) async throws -> WorkerResponse {
        try await enqueue(Array(encoder.encode(value)), options: options)
    }

    /// Queues `value` encoded as JSON and decodes the answer as `Answer`.
    public func enqueue<Value: Encodable, Answer: Decodable>(json value: Value, as type: Answer.Type,
                                                             options: RequestOptions = RequestOptions()) async throws -> Answer {
        try await enqueue(json: value, options: options).decode(type)
    }

    /// Broadcasts `value` encoded as JSON.
    public func broadcast<Value: Encodable>(_ name: String, json value: Value) throws {
        broadcast(name, Array(try JSONEncoder().encode(value)))
    }
}

extension WorkerResponse {
    /// The data decoded from JSON.
    public func decode<T: Decodable>(_ type: T.Type, decoder: JSONDecoder = JSONDecoder()) throws -> T {
        try decoder.decode(type, from: Data(bytes))
    }
}

extension WorkerEvent {
    /// The event's data decoded from JSON.
    public func decode<T: Decodable>(_ type: T.Type) throws -> T { try JSONDecoder().decode(type, from: Data(data)) }

    /// Replies with `value` encoded as JSON.
    public func reply<T: Encodable>(json value: T) throws { reply(Array(try JSONEncoder().encode(value))) }
}

extension Worker.Request {
    /// The request's data decoded from JSON.
    public func decode<T: Decodable>(_ type: T.Type, decoder: JSONDecoder = JSONDecoder()) throws -> T {
        try decoder.decode(type, from: Data(data))
    }

    /// Answers with `value` encoded as JSON.
    public func respond<T: Encodable>(json value: T, encoder: JSONEncoder = JSONEncoder()) throws {
        respond(Array(try encoder.encode(value)))
    }
}

extension Worker.Event {
    /// The event's data decoded from JSON.
    public func decode<T: Decodable>(_ type: T.Type) throws -> T { try JSONDecoder().decode(type, from: Data(data)) }
}

extension Worker {
    /// Emits `value` encoded as JSON.
    public func emit<T: Encodable>(_ name: String, json value: T) throws {
        emit(name, Array(try JSONEncoder().encode(value)))
    }
}
