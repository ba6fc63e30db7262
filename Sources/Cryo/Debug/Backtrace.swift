import CCryo
import CUnwind
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc

/// The call stack of one thread, innermost frame first, found by libunwind's
/// remote unwinder either straight from an image (nothing is restored) or
/// from a running process that is seized for the time it takes.
public struct ThreadBacktrace: Codable, Sendable {
    public struct Frame: Codable, Sendable {
        public var ip: UInt64
        /// The function from the file's symbol table; nil when none holds ip.
        public var function: String?
        /// ip minus the function's start.
        public var offset: UInt64?
        /// The mapped file (or [vdso], [stack]...) that holds the frame's code.
        public var file: String?
        /// Why the file was not used (e.g. it was replaced since the dump), or
        /// "signal handler called" for the sigreturn trampoline.
        public var note: String?

        enum CodingKeys: String, CodingKey { case ip, function, offset, file, note }

        /// Every key is always present (null when unknown), so tools can rely on the shape.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(ip, forKey: .ip)
            try container.encode(function, forKey: .function)
            try container.encode(offset, forKey: .offset)
            try container.encode(file, forKey: .file)
            try container.encode(note, forKey: .note)
        }
    }

    public var pid: Int32
    public var comm: String
    public var tid: Int32
    public var frames: [Frame]
    /// Set when the walk ended on an error or the frame limit rather than at the outermost frame.
    public var error: String?

    enum CodingKeys: String, CodingKey { case pid, comm, tid, frames, error }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(pid, forKey: .pid)
        try container.encode(comm, forKey: .comm)
        try container.encode(tid, forKey: .tid)
        try container.encode(frames, forKey: .frames)
        try container.encode(error, forKey: .error)
    }
}

public enum Backtrace {
    /// Deeper stacks are cut here (and say so).
    public static let maximumFrames = 64

    /// Every thread of every process of an image, unwound from the saved
    /// registers and the memory the image would restore.
    public static func fromImage(_ image: Image) -> [ThreadBacktrace] {
        var result: [ThreadBacktrace] = []
        for task in image.tasks {
            let files = MappedFiles(regions: task.memory.mappings.map { m in
                let label: String? = switch m.kind {
                case .file: m.path
                case .anonymous, .sharedAnonymous: nil
                default: "[\(m.kind.rawValue)]"
                }
                return MappedRegion(start: m.start, end: m.end, fileOffset: m.fileOffset, path: m.kind == .file ? m.path : nil,
                                    label: label, device: m.device, inode: m.inode, executable: m.protection.contains("x"))
            })
            let target = ImageUnwindTarget(image: image, task: task, files: files)
            var accessors = ImageUnwindTarget.accessors
            guard let space = _Ux86_64_create_addr_space(&accessors, 0) else {
                for thread in task.threads {
                    result.append(ThreadBacktrace(pid: task.core.pid, comm: task.core.comm, tid: thread.tid, frames: [],
                                                  error: "libunwind could not create an address space"))
                }
                continue
            }
            defer { _Ux86_64_destroy_addr_space(space) }
            for thread in task.threads {
                target.registers = thread.general
                let (frames, error) = withExtendedLifetime(target) {
                    walk(space, argument: Unmanaged.passUnretained(target).toOpaque())
                }
                result.append(ThreadBacktrace(pid: task.core.pid, comm: task.core.comm, tid: thread.tid,
                                              frames: describe(frames, files), error: error))
            }
        }
        return result
    }

    public struct Live: Sendable {
        public var threads: [ThreadBacktrace]
        /// From seizing the first thread to letting the last one go.
        public var stoppedSeconds: Double
    }

    /// Every thread of a running process, unwound through ptrace with
    /// libunwind-ptrace while the process is seized; it carries on after.
    /// All ptrace requests come from the calling thread, which seizes.
    public static func live(pid: pid_t) throws -> Live {
        guard pid != getpid() else { throw CryoError("pid \(pid) is cryo itself") }
        let started = ContinuousClock.now
        let tree = try FrozenTree.freezeOne(pid)
        guard let process = tree.live.first else {
            throw tree.release(after: CryoError("pid \(pid) is a zombie"))
        }
        // Only the walk happens while the process is stopped; naming frames
        // (reading symbol tables) waits until it runs again.
        var walks: [(tid: pid_t, frames: [RawFrame], error: String?)] = []
        let regions: [MappedRegion]
        do {
            regions = try readMappings(pid: pid, withFlags: false).map { m in
                let isFile = m.path.hasPrefix("/") && m.inode != 0
                let (major, minor) = parseDevice(m.device)
                return MappedRegion(start: m.start, end: m.end, fileOffset: m.offset, path: isFile ? m.path : nil,
                                    label: m.path.isEmpty ? nil : m.path, device: isFile ? FileObjects.deviceNumber(major: major, minor: minor) : nil,
                                    inode: isFile ? m.inode : nil, executable: m.permissions.contains("x"))
            }
            for thread in process.threads {
                let (frames, error) = walkLive(tid: thread.pid)
                walks.append((thread.pid, frames, error))
            }
        } catch {
            throw tree.release(after: error)
        }
        try tree.release()
        let stopped = seconds(since: started)
        let files = MappedFiles(regions: regions)
        let threads = walks.map {
            ThreadBacktrace(pid: pid, comm: process.comm, tid: $0.tid, frames: describe($0.frames, files), error: $0.error)
        }
        return Live(threads: threads, stoppedSeconds: stopped)
    }

    /// One seized thread through libunwind-ptrace's own accessors (libunwind
    /// passes their argument, the _UPT handle, on to every accessor).
    private static func walkLive(tid: pid_t) -> ([RawFrame], String?) {
        guard let upt = _UPT_create(tid) else { return ([], "libunwind-ptrace could not set up thread \(tid)") }
        defer { _UPT_destroy(upt) }
        var accessors = unw_accessors_t()
        accessors.find_proc_info = _UPT_find_proc_info
        accessors.put_unwind_info = _UPT_put_unwind_info
        accessors.get_dyn_info_list_addr = _UPT_get_dyn_info_list_addr
        accessors.access_mem = _UPT_access_mem
        accessors.access_reg = _UPT_access_reg
        accessors.access_fpreg = _UPT_access_fpreg
        // Never resume through libunwind: FrozenTree.release lets the thread go as it was seized.
        accessors.resume = { _, _, _ in unwInvalid }
        accessors.get_proc_name = _UPT_get_proc_name
        guard let space = _Ux86_64_create_addr_space(&accessors, 0) else { return ([], "libunwind could not create an address space") }
        defer { _Ux86_64_destroy_addr_space(space) }
        return walk(space, argument: upt)
    }

    /// A frame as the walk finds it.
    struct RawFrame {
        var ip: UInt64
        /// ip is where the thread stopped or a signal interrupted it, not a return address.
        var interrupted: Bool
        /// The sigreturn trampoline a signal handler returns to.
        var isTrampoline = false

        /// The address whose function and file the frame belongs to. A return
        /// address can sit right after the end of its caller (a call to a
        /// noreturn function), so the call before it is used, as libunwind does;
        /// a handler returns to the very start of the trampoline.
        var site: UInt64 { interrupted || isTrampoline ? ip : ip &- 1 }
    }

    /// Steps from the innermost frame outwards, at most `maximumFrames`.
    private static func walk(_ space: unw_addr_space_t, argument: UnsafeMutableRawPointer) -> ([RawFrame], String?) {
        var cursor = unw_cursor_t()
        let started = _Ux86_64_init_remote(&cursor, space, argument)
        guard started == 0 else { return ([], "cannot start unwinding: \(unwindError(started))") }
        var frames: [RawFrame] = []
        while frames.count < maximumFrames {
            var ip: unw_word_t = 0
            let read = _Ux86_64_get_reg(&cursor, Int32(UNW_REG_IP.rawValue), &ip)
            guard read == 0 else { return (frames, "cannot read the instruction pointer: \(unwindError(read))") }
            // libunwind 1.6 answers "is a signal frame" for the frame a signal
            // interrupted, once it has stepped out of the sigreturn trampoline.
            let interrupted = _Ux86_64_is_signal_frame(&cursor) > 0
            if interrupted, !frames.isEmpty { frames[frames.count - 1].isTrampoline = true }
            frames.append(RawFrame(ip: ip, interrupted: frames.isEmpty || interrupted))
            let step = _Ux86_64_step(&cursor)
            if step == 0 { return (frames, nil) }
            if step < 0 { return (frames, "unwinding stopped: \(unwindError(step))") }
        }
        return (frames, "stopped after \(maximumFrames) frames")
    }

    /// Names each frame from the symbol tables of the file mapped there.
    private static func describe(_ raw: [RawFrame], _ files: MappedFiles) -> [ThreadBacktrace.Frame] {
        raw.map { r in
            var frame = ThreadBacktrace.Frame(ip: r.ip)
            if let region = files.region(containing: r.site) {
                frame.file = region.label
                frame.note = files.problem(for: region)
            }
            if r.isTrampoline { frame.note = frame.note ?? "signal handler called" }
            if let symbol = files.symbol(at: r.site) {
                frame.function = symbol.name
                frame.offset = symbol.offset + (r.ip - r.site)
            }
            return frame
        }
    }

    static func unwindError(_ code: Int32) -> String {
        _Ux86_64_strerror(code).map { String(cString: $0) } ?? "error \(code)"
    }
}

let unwNoInfo = -Int32(UNW_ENOINFO.rawValue)
let unwBadRegister = -Int32(UNW_EBADREG.rawValue)
let unwInvalid = -Int32(UNW_EINVAL.rawValue)
let unwOutOfMemory = -Int32(UNW_ENOMEM.rawValue)

/// libunwind register numbers (UNW_X86_64_RAX ... UNW_X86_64_RIP) as words of struct user_regs_struct.
private let userRegisterIndex: [Int] = ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
                                        "r12", "r13", "r14", "r15", "rip"].map { ThreadRecord.registerNames.firstIndex(of: $0)! }

/// The get_proc_name accessor of an image: the symbol that holds ip in the
/// mapped file's symbol tables.
private func name(_ files: MappedFiles, _ ip: unw_word_t, _ buffer: UnsafeMutablePointer<CChar>?, _ length: Int,
                  _ offset: UnsafeMutablePointer<unw_word_t>?) -> Int32 {
    guard let buffer, length > 0, let found = files.symbol(at: ip) else { return unwNoInfo }
    let (symbol, distance) = (found.name, found.offset)
    let bytes = Array(symbol.utf8.prefix(length - 1))
    for (i, byte) in bytes.enumerated() { buffer[i] = CChar(bitPattern: byte) }
    buffer[bytes.count] = 0
    offset?.pointee = distance
    return bytes.count < symbol.utf8.count ? unwOutOfMemory : 0
}

/// One process of an image as libunwind's remote address space: memory from
/// the image (saved pages, else the mapped file, else zeros), registers from
/// the thread record being unwound, unwind tables from the mapped files.
final class ImageUnwindTarget {
    let image: Image
    let task: TaskImage
    let files: MappedFiles
    /// The thread being unwound: struct user_regs_struct, word by word.
    var registers: [UInt64] = []
    /// Pages read so far by page address; nil for an address in no mapping.
    private var pages: [UInt64: [UInt8]?] = [:]

    init(image: Image, task: TaskImage, files: MappedFiles) {
        self.image = image
        self.task = task
        self.files = files
    }

    private func page(_ address: UInt64) -> [UInt8]? {
        let base = address & ~0xfff
        if let known = pages[base] { return known }
        let bytes = try? image.bytes(of: task, at: base, count: 4096)
        pages[base] = bytes
        return bytes
    }

    func readWord(_ address: UInt64) -> UInt64? {
        var word: UInt64 = 0
        for i in 0..<UInt64(8) {
            guard let page = page(address &+ i) else { return nil }
            word |= UInt64(page[Int((address &+ i) & 0xfff)]) << (8 * i)
        }
        return word
    }

    static func from(_ argument: UnsafeMutableRawPointer?) -> ImageUnwindTarget {
        Unmanaged<ImageUnwindTarget>.fromOpaque(argument!).takeUnretainedValue()
    }

    static var accessors: unw_accessors_t {
        var a = unw_accessors_t()
        a.find_proc_info = { space, ip, info, needUnwindInfo, argument in
            guard var table = ImageUnwindTarget.from(argument).files.unwindTable(for: ip) else { return unwNoInfo }
            return _Ux86_64_dwarf_search_unwind_table(space, ip, &table, info, needUnwindInfo, argument)
        }
        // What dwarf_search_unwind_table hands out, libunwind frees itself;
        // this is only called for dynamically registered unwind info, which an image has none of.
        a.put_unwind_info = { _, _, _ in }
        a.get_dyn_info_list_addr = { _, _, _ in unwNoInfo }
        a.access_mem = { _, address, value, write, argument in
            guard write == 0, let value else { return unwInvalid }  // the image is read-only
            guard let word = ImageUnwindTarget.from(argument).readWord(address) else { return unwInvalid }
            value.pointee = word
            return 0
        }
        a.access_reg = { _, register, value, write, argument in
            let target = ImageUnwindTarget.from(argument)
            guard let value, register >= 0, Int(register) < userRegisterIndex.count else { return unwBadRegister }
            let index = userRegisterIndex[Int(register)]
            guard index < target.registers.count else { return unwBadRegister }
            if write != 0 { target.registers[index] = value.pointee } else { value.pointee = target.registers[index] }
            return 0
        }
        a.access_fpreg = { _, _, _, _, _ in unwBadRegister }
        a.resume = { _, _, _ in unwInvalid }
        // cryo names frames itself once the walk is done (see describe), with the same
        // lookup; this keeps unw_get_proc_name working on this address space too.
        a.get_proc_name = { _, ip, buffer, length, offset, argument in
            name(ImageUnwindTarget.from(argument).files, ip, buffer, length, offset)
        }
        return a
    }
}
