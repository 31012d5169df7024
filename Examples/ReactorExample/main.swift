// A small tour of the reactor: a repeating timer, a child process, and a signal, on one thread.
import LPMReactor
import Glibc

Reactor.blockSignals([SIGUSR1])
let reactor = try Reactor()
print("reactor backend: \(reactor.backendKind)")

var ticks = 0
var timer: Reactor.Timer?
timer = try reactor.schedule(after: .milliseconds(10), repeating: .milliseconds(10)) {
    ticks += 1
    if ticks == 3 {
        print("timer ticked 3 times; cancelling it")
        reactor.cancel(timer!)
    }
}

var pid: pid_t = 0
let args: [String] = ["/bin/sh", "-c", "exit 42"]
var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
posix_spawn(&pid, "/bin/sh", nil, nil, &argv, nil)
try reactor.watchChild(pid) { status in print("child \(pid) \(status)") }

let watch = try reactor.watchSignal(SIGUSR1) { signal in
    print("got \(Reactor.signalName(signal) ?? "signal \(signal)") through the signalfd")
    reactor.stop()
}
try reactor.schedule(after: .milliseconds(60)) { kill(getpid(), SIGUSR1) }

try reactor.run()
try reactor.unwatchSignal(watch)
reactor.close()
print("done")
