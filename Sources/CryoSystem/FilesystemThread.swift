import CCryo
import Glibc
import SystemPackage

/// Work that needs its own working directory or root (binding a unix socket
/// to a relative name, or under a private root) without touching the rest of
/// cryo: it runs on a thread of its own that first unshares its filesystem
/// context (CLONE_FS), so chdir and chroot there are seen by no other thread.
public enum FilesystemThread {
    private final class Job: @unchecked Sendable {
        let body: () throws -> Void
        var failure: (any Error)?
        init(_ body: @escaping () throws -> Void) { self.body = body }
        func run() {
            do {
                try Kernel.syscall(SYS_unshare, cloneFS, name: "unshare(CLONE_FS)")
                try body()
            } catch {
                failure = error
            }
        }
    }

    private static let cloneFS: Int32 = 0x200       // CLONE_FS
    private static let cloneNewNS: Int32 = 0x20000  // CLONE_NEWNS

    /// Runs `body` on a new thread with a filesystem context of its own, and waits for it.
    public static func run(_ body: @escaping () throws -> Void) throws {
        let job = Job(body)
        let context = Unmanaged.passRetained(job)
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let job = Unmanaged<Job>.fromOpaque(raw!).takeRetainedValue()
            job.run()
            return nil
        }, context.toOpaque())
        guard rc == 0 else {
            context.release()
            throw SyscallError("pthread_create", errno: Errno(rawValue: rc))
        }
        pthread_join(thread, nil)
        if let failure = job.failure { throw failure }
    }

    /// An empty tmpfs of cryo's own that no path reaches (mounted in a mount namespace
    /// that ends with the thread that made it), kept alive by the O_PATH descriptor returned.
    public static func privateRoot(object: String) throws -> FileDescriptor {
        var made: FileDescriptor? = nil
        try run {
            try Kernel.syscall(SYS_unshare, cloneNewNS, name: "unshare(CLONE_NEWNS)", object: object)
            // Nothing mounted here may reach cryo's own mount namespace.
            try "/".withCString {
                try Kernel.syscall(SYS_mount, Int(0), $0, Int(0), UInt(16384 | (1 << 18)) /* MS_REC | MS_PRIVATE */, Int(0),
                                   name: "mount(/, MS_REC|MS_PRIVATE)", object: object)
            }
            try "tmpfs".withCString { tmpfs in
                try "/tmp".withCString { target in
                    try "mode=0755".withCString {
                        try Kernel.syscall(SYS_mount, tmpfs, target, tmpfs, UInt(0), $0, name: "mount(tmpfs on /tmp)", object: object)
                    }
                }
            }
            made = try "/tmp".withCString {
                FileDescriptor(rawValue: Int32(try Kernel.syscall(SYS_openat, AT_FDCWD, $0, CRYO_O_PATH | O_DIRECTORY | O_CLOEXEC, Int32(0),
                                                                  name: "open(tmpfs root)", object: object)))
            }
        }
        return made!
    }

    /// clone3 with the exact `pid` inside the pid namespace open at `namespace` (joined by a
    /// thread of its own, for its children only); the child parks like `Processes.cloneParked`.
    /// Returns the child's pid as cryo sees it.
    public static func cloneParked(pid: pid_t, park: FileDescriptor, inNamespace namespace: FileDescriptor,
                                   object: String) throws -> pid_t {
        var child: pid_t = 0
        try run {
            try Processes.joinNamespace(namespace, type: 0x20000000 /* CLONE_NEWPID */, name: "setns(CLONE_NEWPID)", object: object)
            child = try Processes.cloneParked(pid: pid, park: park)
        }
        return child
    }

    /// Inside `run`: makes `root` this thread's root and working directory.
    public static func enter(_ root: FileDescriptor, object: String) throws {
        try Kernel.syscall(SYS_fchdir, root, name: "fchdir(private root)", object: object)
        try ".".withCString { try Kernel.syscall(SYS_chroot, $0, name: "chroot(private root)", object: object) }
    }

    /// Inside `run`: chdir.
    public static func changeDirectory(_ path: String, object: String) throws {
        try path.withCString { try Kernel.syscall(SYS_chdir, $0, name: "chdir(\(path))", object: object) }
    }

    /// Inside `run`: every missing directory of the absolute `path`, made 0755.
    public static func makeDirectories(_ path: String, object: String) throws {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/" + part
            let result = prefix.withCString { Kernel.rawSyscall(SYS_mkdirat, [AT_FDCWD, $0, Int32(0o755)]) }
            if let e = Kernel.errno(of: result), e != .fileExists {
                throw SyscallError("mkdir(\(prefix))", errno: e, object: object)
            }
        }
    }
}
