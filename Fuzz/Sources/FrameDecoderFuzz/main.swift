import CFuzzer
import Glibc

// The target itself is in FuzzTarget.swift: globals there are initialized on first use, not in
// the order of this file's top-level code (which never goes past the next line).
// SwiftPM gives this executable its own `main`, so libFuzzer's is not linked: hand libFuzzer the
// command line here (the same flags: -seed, -max_total_time, corpus folders).
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) })
