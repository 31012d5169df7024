// Type-checked by SurfaceTests as a client outside this package would compile it: with every
// product module imported beside Foundation and swift-system, each public name must resolve
// (a clash is "ambiguous for type lookup"), and the package-only helpers must stay invisible.
import Foundation
import LoadProcessManager
import LoadProcessManagerCodable
import LoadProcessManagerWorker
import LPMReactor
import SystemPackage

// Foundation's and swift-system's names keep their meaning.
func foundation(_ a: InputStream, _ b: OutputStream, _ c: Data, _ d: URL, _ e: Process) {}
func system(_ a: Errno, _ b: FileDescriptor, _ c: FilePath) {}

// Ours, unqualified, in type position.
func supervisor(_ a: Supervisor, _ b: SupervisorConfiguration, _ c: RequestOptions, _ d: WorkerResponse,
                _ e: ResponseStream, _ f: SupervisorError, _ g: SupervisorEvent, _ h: WorkerEvent,
                _ i: WorkerHealth, _ j: WorkerState, _ k: PoolStatus, _ l: WorkerExitStatus, _ m: RequestID) {}
func worker(_ a: Worker, _ b: Worker.Request, _ c: Worker.Event, _ d: Worker.OutputStream,
            _ e: Worker.InputStream, _ f: WorkerError) {}
func reactor(_ a: Reactor, _ b: Reactor.Handle, _ c: ReactorThread, _ d: ReactorError, _ e: ReactorExecutor) {}

// The request id is one type on both sides.
func sameID(_ r: Worker.Request, _ w: WorkerResponse) -> Bool { r.id == w.id }

// The async variants are chosen in async code.
func lifecycle(_ s: Supervisor) async throws {
    try await s.start()
    try await s.resize(2)
    await s.softKill()
    await s.hardKill()
}
