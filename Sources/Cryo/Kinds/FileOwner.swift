import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// Who gets SIGIO/SIGURG for an open file description (F_SETOWN_EX), with which
/// signal (F_SETSIG), and whether O_ASYNC is on. Any kind can carry it; it is
/// set from inside a restored holder, where the owner's pid means the same.
public struct FileOwner: Codable, Sendable, Equatable {
    /// F_OWNER_TID (0), F_OWNER_PID (1) or F_OWNER_PGRP (2).
    public var type: Int32
    /// 0: no owner.
    public var pid: Int32
    /// F_SETSIG's signal; 0 is SIGIO.
    public var signal: Int32
    public var async: Bool

    static let setSignal: Int32 = 10, getSignal: Int32 = 11, setOwnerEx: Int32 = 15, getOwnerEx: Int32 = 16
    static let asyncFlag: UInt32 = 0o20000  // O_ASYNC (FASYNC)

    /// The owner of the description behind `handle`, nil when nothing is set.
    static func dump(_ handle: FileDescriptor, flags: UInt32, object: String) throws -> FileOwner? {
        // An O_PATH description has no owner (fcntl says EBADF).
        if Int32(bitPattern: flags) & CRYO_O_PATH != 0 { return nil }
        var owner: (Int32, Int32) = (0, 0)  // struct f_owner_ex
        try withUnsafeMutableBytes(of: &owner) {
            try Kernel.syscall(SYS_fcntl, handle, getOwnerEx, $0.baseAddress, name: "fcntl(F_GETOWN_EX)", object: object)
        }
        let signal = Int32(try Kernel.syscall(SYS_fcntl, handle, getSignal, name: "fcntl(F_GETSIG)", object: object))
        let async = flags & asyncFlag != 0
        guard owner.1 != 0 || signal != 0 || async else { return nil }
        return FileOwner(type: owner.0, pid: owner.1, signal: signal, async: async)
    }

    var summary: String {
        let kind = ["thread", "process", "process group"][Int(min(max(type, 0), 2))]
        return "owner \(kind) \(pid)" + (signal != 0 ? " signal \(signal)" : "") + (async ? " O_ASYNC" : "")
    }

    func validate() -> String? {
        (0...2).contains(type) && (0...64).contains(signal) && pid >= 0 ? nil : "bad file owner \(type)/\(pid)/\(signal)"
    }

    /// Set inside a restored process (after its threads and the whole tree exist), on its first fd of each description.
    static func afterInstall(_ installed: InstalledDescriptors, parasite: Parasite) throws {
        var done = Set<Int>()
        for d in installed.descriptors {
            guard let owner = installed.files[d.file].owner, done.insert(d.file).inserted else { continue }
            let object = "pid \(parasite.tracee.pid) fd \(d.fd)"
            func inject(_ what: String, _ args: UInt64...) throws -> Int64 {
                let result = try parasite.tracee.syscall(72 /* fcntl */, UInt64(d.fd), args[0], args.count > 1 ? args[1] : 0)
                if result < 0 { throw SyscallError("injected fcntl(\(what))", errno: .init(rawValue: Int32(-result)), object: object) }
                return result
            }
            if owner.signal != 0 { _ = try inject("F_SETSIG", UInt64(setSignal), UInt64(owner.signal)) }
            if owner.pid != 0 {
                var bytes = [UInt8](repeating: 0, count: 8)
                bytes.withUnsafeMutableBytes {
                    $0.storeBytes(of: owner.type, toByteOffset: 0, as: Int32.self)
                    $0.storeBytes(of: owner.pid, toByteOffset: 4, as: Int32.self)
                }
                _ = try inject("F_SETOWN_EX owner \(owner.pid)", UInt64(setOwnerEx), try parasite.place(bytes))
            }
            if owner.async {
                // open() keeps O_ASYNC in the flags without arming it: F_SETFL arms it.
                let flags = try inject("F_GETFL", UInt64(F_GETFL))
                _ = try inject("F_SETFL O_ASYNC", UInt64(F_SETFL), UInt64(flags) | UInt64(asyncFlag))
            }
        }
    }
}
