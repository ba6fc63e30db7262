// `cryo bt`: backtraces straight from an image (nothing is restored) and of
// a running process, which must carry on and still pass its own check.

import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("cryo bt")
    struct BacktraceTests {
        @Test("bt of an image names the fixture's call chain; --json parses")
        func fromImage() throws {
            let scratch = try Scratch("callchain-bt")
            defer { scratch.remove() }
            let fixture = try Fixture("callchain", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid

            let images = scratch.file("img")
            let dump = try cryo(["dump", "--leave-running", "-t", "\(pid)", "-D", images], in: scratch, reaping: fixture)
            try #require(dump.succeeded, "\(dump)\n\(fixture.report)")

            let bt = try cryo(["bt", images], in: scratch, timeout: 60)
            #expect(bt.succeeded, "\(bt)")
            expectCallChain(frames(ofThread: pid, in: bt.stdout), "\(bt)")

            let json = try cryo(["bt", images, "--json"], in: scratch, timeout: 60)
            #expect(json.succeeded, "\(json)")
            let parsed = try? JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]]
            #expect(parsed != nil, "bt --json output is not a JSON array of objects:\n\(json.stdout.prefix(2000))")
            let main = parsed?.first { ($0["tid"] as? Int) == Int(pid) && ($0["pid"] as? Int) == Int(pid) }
            let jsonFrames = (main?["frames"] as? [[String: Any]])?.map {
                (function: $0["function"] as? String ?? "??", file: $0["file"] as? String ?? "")
            }
            expectCallChain(jsonFrames, "\(json)")
            #expect((main?["frames"] as? [[String: Any]])?.allSatisfy { $0["ip"] is Int && $0.keys.contains("offset") } == true,
                    "every frame has a numeric ip and an offset key:\n\(json.stdout.prefix(2000))")

            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 30)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture)
        }

        @Test("bt -t names the call chain of a running process, which carries on and passes")
        func live() throws {
            let scratch = try Scratch("callchain-bt-live")
            defer { scratch.remove() }
            let fixture = try Fixture("callchain", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()
            let pid = fixture.pid

            let bt = try cryo(["bt", "-t", "\(pid)"], in: scratch, timeout: 60, reaping: fixture)
            #expect(bt.succeeded, "\(bt)")
            expectCallChain(frames(ofThread: pid, in: bt.stdout), "\(bt)")
            #expect(bt.stdout.contains("pid \(pid) was stopped for "), "no stopped time reported:\n\(bt)")

            if let ended = fixture.pollOriginal() {
                Issue.record("the process ended during `bt -t`: \(ended)\n\(fixture.report)")
                return
            }
            #expect(waitUntil(timeout: 5) { ProcStatus(pid: pid).map { $0.isRunning && $0.tracerPid == 0 } ?? false },
                    "after `bt -t` the process should run free: \(describeProcess(pid))")

            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 30)
            #expect(exit == .exited(0), "\(fixture.report)")
            expectPass(fixture, "\(bt)")
        }
    }
}

/// The frames (function, file) printed for thread `tid` by `cryo bt`, or nil
/// when the output has no such thread. A frame line reads
/// `#0  0x00007f...  function+0x1c  (/path/to/file)`, `??` for no name.
private func frames(ofThread tid: pid_t, in output: String) -> [(function: String, file: String)]? {
    var result: [(function: String, file: String)]?
    var inThread = false
    for line in output.split(separator: "\n") {
        if line.hasPrefix("pid ") {
            inThread = line.hasSuffix(" thread \(tid):")
            if inThread { result = [] }
            continue
        }
        guard inThread, line.hasPrefix("#") else { continue }
        let columns = line.split(separator: " ")
        guard columns.count >= 3 else { continue }
        let function = String(columns[2].split(separator: "+").first ?? "")
        let file = columns.count >= 4 ? String(columns[3].dropFirst().dropLast()) : ""
        result?.append((function, file))
    }
    return result
}

/// level_three, level_two, level_one and main as consecutive frames, with
/// only frames outside the fixture's own binary (libc's wrapper) before them.
private func expectCallChain(_ frames: [(function: String, file: String)]?, _ context: @autoclosure () -> String,
                             sourceLocation: SourceLocation = #_sourceLocation) {
    guard let frames else {
        Issue.record("no backtrace of the main thread\n\(context())", sourceLocation: sourceLocation)
        return
    }
    let names = frames.map(\.function)
    let chain = ["level_three", "level_two", "level_one", "main"]
    guard let start = names.firstIndex(of: "level_three") else {
        Issue.record("level_three is not among the frames \(names)\n\(context())", sourceLocation: sourceLocation)
        return
    }
    #expect(Array(names[start..<min(start + chain.count, names.count)]) == chain,
            "frames \(names) do not continue level_three, level_two, level_one, main\n\(context())", sourceLocation: sourceLocation)
    let before = frames[..<start]
    #expect(before.allSatisfy { !$0.file.hasSuffix("/callchain") },
            "frames of the fixture itself above level_three: \(names)\n\(context())", sourceLocation: sourceLocation)
}
