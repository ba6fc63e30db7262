import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

// Shared by the socket kinds (inet, netlink, packet): buffer sizes and
// SO_BUF_LOCK as the image recorded them, the receive and send timeouts, and
// the classic BPF filter with its lock, SO_TIMESTAMPING.

enum SocketBuffers {
    /// Buffer sizes the program set (SO_BUF_LOCK says which; `everySize` also the others) as
    /// they were, the rest left to the kernel. Through the FORCE options, since the kernel
    /// doubles what it is given; then the lock bits as they were (none recorded: left alone).
    static func restore(_ fd: FileDescriptor, options: [String: Int32], everySize: Bool = false, what: String) throws {
        let lock = options["SO_BUF_LOCK"]
        for (name, bit, option, force, forceName) in [("SO_SNDBUF", Int32(1), CRYO_SO_SNDBUF, CRYO_SO_SNDBUFFORCE, "SO_SNDBUFFORCE"),
                                                      ("SO_RCVBUF", Int32(2), CRYO_SO_RCVBUF, CRYO_SO_RCVBUFFORCE, "SO_RCVBUFFORCE")] {
            guard let wanted = options[name], everySize || (lock ?? 0) & bit != 0,
                  try Sockets.option(fd, CRYO_SOL_SOCKET, option, name: name, object: what) != wanted else { continue }
            try Sockets.setOption(fd, CRYO_SOL_SOCKET, force, wanted / 2, name: forceName, object: what)
        }
        if let lock, try Sockets.option(fd, CRYO_SOL_SOCKET, CRYO_SO_BUF_LOCK, name: "SO_BUF_LOCK", object: what) != lock {
            try Sockets.setOption(fd, CRYO_SOL_SOCKET, CRYO_SO_BUF_LOCK, lock, name: "SO_BUF_LOCK", object: what)
        }
    }
}

enum SocketTimeouts {
    /// SO_RCVTIMEO and SO_SNDTIMEO in microseconds, each nil when not set.
    static func dump(_ fd: FileDescriptor, what: String) throws -> (receive: Int64?, send: Int64?) {
        var result: [Int64?] = []
        for (option, label) in [(CRYO_SO_RCVTIMEO_OLD, "SO_RCVTIMEO"), (CRYO_SO_SNDTIMEO_OLD, "SO_SNDTIMEO")] {
            let t = try Sockets.option(fd, CRYO_SOL_SOCKET, option, as: timeval.self, name: label, object: what, initial: timeval())
            let micros = Int64(t.tv_sec) * 1_000_000 + Int64(t.tv_usec)
            result.append(micros == 0 ? nil : micros)
        }
        return (result[0], result[1])
    }

    static func restore(_ fd: FileDescriptor, receive: Int64?, send: Int64?, what: String) throws {
        for (micros, option, label) in [(receive, CRYO_SO_RCVTIMEO_OLD, "SO_RCVTIMEO"), (send, CRYO_SO_SNDTIMEO_OLD, "SO_SNDTIMEO")] {
            guard let micros else { continue }
            let t = timeval(tv_sec: Int(micros / 1_000_000), tv_usec: Int(micros % 1_000_000))
            try Sockets.setOption(fd, CRYO_SOL_SOCKET, option, t, name: label, object: what)
        }
    }
}

enum SocketFilter {
    /// The classic BPF program (SO_ATTACH_FILTER) and SO_LOCK_FILTER; nil when there is none.
    /// An eBPF program (SO_ATTACH_BPF) has no classic form to read back: refused.
    static func dump(_ fd: FileDescriptor, what: String) throws -> (program: Data, locked: Bool)? {
        do {
            let program = try Sockets.socketFilter(fd, object: what)
            guard !program.isEmpty else { return nil }
            return (Data(program), try Sockets.option(fd, CRYO_SOL_SOCKET, CRYO_SO_LOCK_FILTER, name: "SO_LOCK_FILTER", object: what) != 0)
        } catch let error as SyscallError where error.errno == .permissionDenied {
            throw CryoError("\(what) has an eBPF socket filter (SO_ATTACH_BPF), which cannot be read back; not supported")
        }
    }
}

enum SocketTimestamping {
    /// SOF_TIMESTAMPING_OPT_ID: each sent packet's timestamp carries an id from a counter the
    /// kernel keeps per socket (for TCP, from the sequence number when it was set): nothing reads it back.
    static let optID: UInt32 = 1 << 7

    /// SO_TIMESTAMPING's flags and bound PHC index (struct so_timestamping), nil when no flag is set.
    static func dump(_ fd: FileDescriptor, what: String) throws -> [UInt32]? {
        var bytes = [UInt8](repeating: 0, count: 8)
        let length = try Sockets.option(fd, CRYO_SOL_SOCKET, 37 /* SO_TIMESTAMPING_OLD */, into: &bytes, name: "SO_TIMESTAMPING", object: what)
        let words = (0..<length / 4).map { i in bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self) } }
        guard let flags = words.first, flags != 0 else { return nil }
        if let refusal = refusal(flags) { throw CryoError("\(what) \(refusal)") }
        return words
    }

    static func refusal(_ flags: UInt32) -> String? {
        flags & optID == 0 ? nil
            : "has SO_TIMESTAMPING with SOF_TIMESTAMPING_OPT_ID, whose counter of timestamp ids cannot be read back; not supported"
    }

    static func restore(_ fd: FileDescriptor, _ words: [UInt32]?, what: String) throws {
        guard let words, !words.isEmpty else { return }
        let bytes = words.flatMap { word in withUnsafeBytes(of: word) { Array($0) } }
        try Sockets.setOption(fd, CRYO_SOL_SOCKET, 37, bytes: bytes, name: "SO_TIMESTAMPING", object: what)
    }
}
