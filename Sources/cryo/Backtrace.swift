import ArgumentParser
import Cryo
import CryoSystem
import FoundationEssentials

struct BacktraceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bt",
        abstract: "Print a backtrace of every thread: from an image folder (nothing is restored), or with -t of a running process, which carries on.")
    @Argument(help: "The image folder.") var directory: String?
    @Option(name: [.customShort("t"), .customLong("tree")],
            help: ArgumentHelp("Unwind this running process instead of an image.", valueName: "pid"))
    var pid: Int32?
    @Flag(help: "Print the backtraces as JSON: an array of {pid, comm, tid, frames: [{ip, function, offset, file, note}], error}.")
    var json = false

    func validate() throws {
        if (directory == nil) == (pid == nil) { throw ValidationError("give either an image folder or -t PID") }
    }

    func run() throws {
        let threads: [ThreadBacktrace]
        var stopped: Double?
        if let pid {
            let live = try failing { try Backtrace.live(pid: pid) }
            threads = live.threads
            stopped = live.stoppedSeconds
        } else {
            let image = try failing { try Image(directory: directory!) }
            threads = Backtrace.fromImage(image)
        }
        if json {
            print(try encodeJSON(threads))
            return
        }
        for (i, thread) in threads.enumerated() {
            if i > 0 { print("") }
            print("pid \(thread.pid) (\(thread.comm)) thread \(thread.tid):")
            for (n, frame) in thread.frames.enumerated() {
                var line = "#\(n)".padded(to: 4) + "0x\(hex(frame.ip, width: 16))  "
                line += frame.function.map { name in frame.offset.map { "\(name)+0x\(hex($0))" } ?? name } ?? "??"
                if let file = frame.file { line += "  (\(file))" }
                if let note = frame.note { line += "  [\(note)]" }
                print(line)
            }
            if let error = thread.error { print("    (\(error))") }
        }
        if let stopped, let first = threads.first {
            print("\npid \(first.pid) was stopped for \(String(printf: "%.3f", stopped * 1000)) ms")
        }
    }
}
