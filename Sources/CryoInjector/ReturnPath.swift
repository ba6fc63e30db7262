import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import Synchronization

/// How a live task gets home by itself if cryo dies while it has changed the
/// task (dump, inspect). ptrace lets a task go when its tracer dies, from
/// whatever registers it has then, so every register state cryo sets must lead
/// back to the task's own: a signal frame holding the original registers, mask
/// and XSAVE area is written below the thread's stack, and two short sequences
/// from the task's own code (normally libc) finish the job:
///   - `mov $15, %eax; syscall`: rt_sigreturn through that frame;
///   - `syscall; ret`: one more syscall (an injected one, or the munmap of the
///     parasite) whose `ret` pops the first gadget from the frame's first word.
/// No instruction is ever written into the task's code.
public struct ReturnGadgets: Sendable, Equatable {
    /// `mov $15,%eax|%rax; syscall`
    public let sigreturn: UInt64
    /// `syscall; ret`
    public let syscallReturn: UInt64

    /// Looks for both sequences in the task's executable file mappings, libc first.
    /// nil when the task has none (a static binary without signal handlers, say).
    public static func find(pid: pid_t) -> ReturnGadgets? {
        guard let candidates = codeMappings(pid: pid) else { return nil }
        var sigreturn: UInt64?
        var syscallReturn: UInt64?
        for mapping in candidates.sorted(by: { $0.isLibc && !$1.isLibc }) where sigreturn == nil || syscallReturn == nil {
            let offsets = cache.withLock { $0[mapping.key] } ?? {
                let found = search(pid: pid, start: mapping.start, end: mapping.end)
                cache.withLock { $0[mapping.key] = found }
                return found
            }()
            if sigreturn == nil, let o = offsets.sigreturn { sigreturn = mapping.start + o }
            if syscallReturn == nil, let o = offsets.syscallReturn { syscallReturn = mapping.start + o }
        }
        guard let sigreturn, let syscallReturn else { return nil }
        return ReturnGadgets(sigreturn: sigreturn, syscallReturn: syscallReturn)
    }

    typealias CodeMapping = (start: UInt64, end: UInt64, key: String, isLibc: Bool)

    /// The task's executable, not writable file mappings. Asked with PROCMAP_QUERY (Linux 6.11),
    /// which skips the other mappings in the kernel: with 10,000 anonymous mappings, printing and
    /// parsing all of /proc/PID/maps for a dozen lines of code was a tenth of a dump.
    static func codeMappings(pid: pid_t) -> [CodeMapping]? {
        let required = CRYO_PROCMAP_QUERY_VMA_READABLE | CRYO_PROCMAP_QUERY_VMA_EXECUTABLE | CRYO_PROCMAP_QUERY_FILE_BACKED_VMA
        if let mappings = try? ProcmapQuery.mappings(pid: pid, required: required) {
            return mappings.compactMap { m in
                guard m.flags & CRYO_PROCMAP_QUERY_VMA_WRITABLE == 0, m.name.hasPrefix("/") else { return nil }
                // The same file at the same offset has the same bytes: one search per library per run.
                let key = "\(m.deviceMajor):\(m.deviceMinor) \(m.inode) \(m.offset)"
                return (m.start, m.end, key, m.name.contains("/libc.so") || m.name.contains("/libc-"))
            }
        }
        return codeMappingsFromText(pid: pid)
    }

    /// The same from the text of /proc/PID/maps (before Linux 6.11).
    static func codeMappingsFromText(pid: pid_t) -> [CodeMapping]? {
        guard let maps = try? Files.read("/proc/\(pid)/maps") else { return nil }
        var candidates: [CodeMapping] = []
        let executable = Array(" r-x".utf8)
        // Line by line on the bytes, no array per line: 10,000 mappings made this a tenth of a dump.
        maps.withUnsafeBufferPointer { all in
            var lineStart = 0
            while lineStart < all.count {
                var lineEnd = lineStart
                while lineEnd < all.count && all[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
                defer { lineStart = lineEnd + 1 }
                let bytes = all[lineStart..<lineEnd]
                // Only executable file mappings matter; most lines are not.
                guard let space = bytes.firstIndex(of: UInt8(ascii: " ")), bytes[space...].starts(with: executable),
                      bytes.contains(UInt8(ascii: "/")) else { continue }  // anonymous code has no path
                let line = String(decoding: bytes, as: UTF8.self)
                let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
                guard fields.count == 6 else { continue }
                let path = fields[5].trimmed()
                guard path.hasPrefix("/") else { continue }
                let range = fields[0].split(separator: "-")
                guard range.count == 2, let start = UInt64(range[0], radix: 16), let end = UInt64(range[1], radix: 16) else { continue }
                // Keyed like codeMappings' (major:minor inode offset; maps prints them in hex, the key in decimal).
                let device = fields[3].split(separator: ":").compactMap { UInt32($0, radix: 16) }
                guard device.count == 2, let inode = UInt64(fields[4]), let offset = UInt64(fields[2], radix: 16) else { continue }
                let key = "\(device[0]):\(device[1]) \(inode) \(offset)"
                candidates.append((start, end, key, path.contains("/libc.so") || path.contains("/libc-")))
            }
        }
        return candidates
    }

    /// With a user shadow stack (CET), rt_sigreturn also checks a token cryo does not write.
    static func usesShadowStack(_ status: TaskStatusLines) -> Bool {
        status["x86_Thread_features"]?.contains("shstk") ?? false
    }

    private struct Offsets: Sendable { var sigreturn: UInt64?; var syscallReturn: UInt64? }
    private static let cache = Mutex<[String: Offsets]>([:])
    private static let sigreturnPatterns: [[UInt8]] = [
        [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05], // mov $15,%rax; syscall (glibc's __restore_rt)
        [0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],             // mov $15,%eax; syscall
    ]
    private static let syscallReturnPattern: [UInt8] = [0x0f, 0x05, 0xc3]

    private static func search(pid: pid_t, start: UInt64, end: UInt64) -> Offsets {
        var result = Offsets()
        let chunk: UInt64 = 1 << 20
        var buffer = [UInt8](repeating: 0, count: Int(chunk))
        var at = start
        while at < end && (result.sigreturn == nil || result.syscallReturn == nil) {
            // Chunks overlap by a pattern's length so no match is split.
            let count = Int(min(chunk, end - at))
            let read = buffer.withUnsafeMutableBytes { raw in
                (try? RemoteMemory.read(pid, at: at, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]))) != nil
            }
            if !read { break }
            buffer.withUnsafeBytes { raw in
                if result.sigreturn == nil {
                    for pattern in sigreturnPatterns {
                        if let o = find(pattern, in: raw, count: count) { result.sigreturn = at - start + UInt64(o); break }
                    }
                }
                if result.syscallReturn == nil, let o = find(syscallReturnPattern, in: raw, count: count) {
                    result.syscallReturn = at - start + UInt64(o)
                }
            }
            if at + UInt64(count) >= end { break }
            at += UInt64(count) - 16
        }
        return result
    }

    private static func find(_ pattern: [UInt8], in raw: UnsafeRawBufferPointer, count: Int) -> Int? {
        pattern.withUnsafeBytes { p in
            Bytes.firstRange(of: p, in: UnsafeRawBufferPointer(rebasing: raw[0..<count]))
        }
    }
}

/// One thread's way home: the gadgets and where its frame was written.
public struct ReturnPath: Sendable {
    public let gadgets: ReturnGadgets
    /// rsp for the way home: the frame's first word (the sigreturn gadget, for a `ret`).
    public let stack: UInt64

    /// Writes the frame for `tracee`'s original state below its stack.
    static func install(for tracee: Tracee, gadgets: ReturnGadgets) throws -> ReturnPath {
        let xsave = try Ptrace.extendedState(tracee.pid)
        let frame: ReturnFrame
        do {
            frame = try ReturnFrame(registers: tracee.originalRegisters, signalMask: tracee.originalSignalMask, xsave: xsave,
                                    layout: XSaveLayout.host, pretcode: gadgets.sigreturn)
        } catch {
            throw SyscallError("building the return frame from \(error)", errno: .invalidArgument, pid: tracee.pid)
        }
        try frame.bytes.withUnsafeBytes { try RemoteMemory.write(tracee.pid, at: frame.address, $0) }
        return ReturnPath(gadgets: gadgets, stack: frame.address)
    }
}


/// The lines of /proc/PID/status the injector needs, split on bytes.
struct TaskStatusLines {
    private var values: [String: String] = [:]
    init?(pid: pid_t, keys: Set<String>) {
        guard let bytes = try? Files.read("/proc/\(pid)/status") else { return nil }
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            let key = String(decoding: line[..<colon], as: UTF8.self)
            if keys.contains(key) {
                values[key] = String(decoding: line[(colon + 1)...], as: UTF8.self).trimmed()
            }
        }
    }
    subscript(key: String) -> String? { values[key] }
    func mask(_ key: String) -> UInt64? { values[key].flatMap { UInt64($0, radix: 16) } }
}
