import CCryo
import Glibc
import SystemPackage

/// Small typed helpers over SystemPackage for the files cryo reads and writes.
public enum Files {
    /// The whole content of a file; /proc files report size 0, so read until EOF.
    public static func read(_ path: String) throws -> [UInt8] {
        let fd = try open(path, .readOnly)
        defer { try? fd.close() }
        return try readAll(fd, path: path)
    }

    public static func readString(_ path: String) throws -> String {
        String(decoding: try read(path), as: UTF8.self)
    }

    public static func readAll(_ fd: FileDescriptor, path: String) throws -> [UInt8] {
        // A chunk that is not zeroed first (this runs for every /proc file read: a zeroed 64 KiB array per call cost more than small reads).
        try withUnsafeTemporaryAllocation(byteCount: 65536, alignment: 16) { chunk in
            var result: [UInt8] = []
            var first = true
            while true {
                let n = try readSome(fd, into: chunk, object: path)
                if n == 0 { return result }
                // A regular file larger than the chunk (a task file with 131k page runs is 3 MB) is read
                // straight into an array of its size: appended chunk by chunk, every growth of the array
                // copied all of it again into new, never touched memory (a fifth of that restore's start).
                // Asked only after a full first chunk, so that small and /proc files cost no fstat.
                if first, n == chunk.count, let size = regularFileSize(fd), size > n {
                    first = false
                    result = try [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
                        UnsafeMutableRawBufferPointer(buffer).copyMemory(from: UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
                        count = n
                        while count < size {
                            let more = try readSome(fd, into: UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(buffer)[count..<size]),
                                                    object: path)
                            if more == 0 { break }
                            count += more
                        }
                    }
                    if result.count < size { return result }  // it shrank meanwhile: all there was
                    continue  // it may have grown: the rest as below
                }
                first = false
                result.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
            }
        }
    }

    /// The size of a regular file; nil for anything else (/proc files say 0, pipes nothing).
    private static func regularFileSize(_ fd: FileDescriptor) -> Int? {
        var status = Glibc.stat()
        guard fstat(fd.rawValue, &status) == 0, status.st_mode & S_IFMT == S_IFREG else { return nil }
        return Int(status.st_size)
    }

    public static func open(_ path: String, _ mode: FileDescriptor.AccessMode,
                            options: FileDescriptor.OpenOptions = [],
                            permissions: FilePermissions? = nil) throws -> FileDescriptor {
        do {
            return try FileDescriptor.open(FilePath(path), mode, options: options.union(.closeOnExec),
                                           permissions: permissions, retryOnInterrupt: true)
        } catch {
            throw SyscallError("open", errno: error as? Errno ?? .ioError, object: path)
        }
    }

    /// Reads what is there (at most the buffer), retrying EINTR: 0 at the end.
    public static func readSome(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, object: @autoclosure () -> String) throws -> Int {
        do { return try fd.read(into: buffer, retryOnInterrupt: true) } catch {
            throw SyscallError("read", errno: error as? Errno ?? .ioError, object: object())
        }
    }

    public static func makeDirectory(_ path: String, mode: mode_t, object: @autoclosure () -> String) throws {
        _ = try checkLibc(Int(mkdir(path, mode)), "mkdir", object: object())
    }

    /// The canonical absolute path (realpath(3)).
    /// rmdir(2).
    public static func removeDirectory(_ path: String) throws {
        _ = try checkLibc(Int(rmdir(path)), "rmdir", object: path)
    }

    /// A cgroup hierarchy mounted at `path` (v1 with `options`, e.g. "none,name=x" or "cpu,cpuacct"; v2 without).
    public static func mountCgroup(at path: String, options: String?) throws {
        let flags = UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC)
        let result = options.map { mount("cgroup", path, "cgroup", flags, $0) } ?? mount("cgroup2", path, "cgroup2", flags, nil)
        _ = try checkLibc(Int(result), "mount(\(options.map { "cgroup, \($0)" } ?? "cgroup2"))", object: path)
    }

    /// Takes the mount at `path` out of the tree at once; it lives on while descriptors inside it are open.
    public static func detachMount(_ path: String) throws {
        _ = try checkLibc(Int(umount2(path, Int32(MNT_DETACH))), "umount2(MNT_DETACH)", object: path)
    }

    public static func realPath(_ path: String) throws -> String {
        guard let resolved = realpath(path, nil) else {
            throw SyscallError("realpath", errno: Errno(rawValue: errno), object: path)
        }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// poll(2): how many entries have events, or nil when a signal interrupted the wait.
    public static func poll(_ entries: inout [pollfd], milliseconds: Int32, object: @autoclosure () -> String) throws -> Int? {
        let n = Glibc.poll(&entries, nfds_t(entries.count), milliseconds)
        if n < 0 && errno == EINTR { return nil }
        return try checkLibc(Int(n), "poll", object: object())
    }

    /// `name` in `directory` (openat), read to its end: for the many small files of one
    /// /proc folder (fdinfo), without walking /proc/PID for each or a large buffer.
    /// `singleRecord`: the file is a seq_file of one record (single_open, as fdinfo), whose first read returns all of it.
    public static func readString(in directory: FileDescriptor, _ name: String, singleRecord: Bool = false,
                                  object: @autoclosure () -> String) throws -> String {
        let fd = openat(directory.rawValue, name, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SyscallError("openat", errno: Errno(rawValue: errno), object: object()) }
        defer { Glibc.close(fd) }
        var result: [UInt8] = []
        var capacity = 4096
        while true {
            let start = result.count
            result.append(contentsOf: repeatElement(0, count: capacity))
            let n = result.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + start, capacity) }
            if n < 0 {
                if errno == EINTR { result.removeLast(capacity); continue }
                throw SyscallError("read", errno: Errno(rawValue: errno), object: object())
            }
            result.removeLast(capacity - n)
            // A /proc file made by one show call (fdinfo: single_open) gives all it has to the first read
            // that has room for it: a short read is its end, and the read that would return 0 is saved.
            if n == 0 || (singleRecord && n < capacity) { return String(decoding: result, as: UTF8.self) }
            capacity = max(capacity, result.count)
        }
    }

    /// The target of symbolic link `name` in `directory` (readlinkat).
    public static func readLink(in directory: FileDescriptor, _ name: String, object: @autoclosure () -> String) throws -> String {
        try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 4097) { buffer in
            let n = buffer.withMemoryRebound(to: CChar.self) { readlinkat(directory.rawValue, name, $0.baseAddress!, 4096) }
            guard n >= 0 else { throw SyscallError("readlinkat", errno: Errno(rawValue: errno), object: object()) }
            return String(decoding: UnsafeBufferPointer(rebasing: buffer[0..<n]), as: UTF8.self)
        }
    }

    public static func readLink(_ path: String) throws -> String {
        var buffer = [CChar](repeating: 0, count: 4097)
        let n = try checkLibc(Glibc.readlink(path, &buffer, 4096), "readlink", object: path)
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func stat(_ path: String, follow: Bool = true) throws -> Glibc.stat {
        var st = Glibc.stat()
        _ = try checkLibc(Int(fstatat(AT_FDCWD, path, &st, follow ? 0 : AT_SYMLINK_NOFOLLOW)), "stat", object: path)
        return st
    }

    public static func stat(_ fd: FileDescriptor, object: String) throws -> Glibc.stat {
        var st = Glibc.stat()
        _ = try checkLibc(Int(Glibc.fstat(fd.rawValue, &st)), "fstat", object: object)
        return st
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// A new folder only the caller may use (mode 0700), named `prefix` and six random characters.
    public static func makeTemporaryDirectory(prefix: String) throws -> String {
        var template = Array((prefix + "XXXXXX").utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw SyscallError("mkdtemp", errno: Errno(rawValue: Glibc.errno), object: prefix + "XXXXXX")
        }
        return String(cString: template)
    }

    public static func write(_ fd: FileDescriptor, _ bytes: UnsafeRawBufferPointer, at offset: Int64, path: String) throws {
        do {
            _ = try fd.writeAll(toAbsoluteOffset: offset, bytes)
        } catch { throw SyscallError("pwrite", errno: error as? Errno ?? .ioError, object: path) }
    }

    public static func write(_ fd: FileDescriptor, _ bytes: [UInt8], path: String) throws {
        do {
            _ = try fd.writeAll(bytes)
        } catch { throw SyscallError("write", errno: error as? Errno ?? .ioError, object: path) }
    }

    public static func seek(_ fd: FileDescriptor, to offset: Int64, object: String) throws {
        do { _ = try fd.seek(offset: offset, from: .start) } catch {
            throw SyscallError("lseek", errno: error as? Errno ?? .ioError, object: object)
        }
    }

    /// Sets the file's size (ftruncate).
    public static func truncate(_ file: FileDescriptor, to size: UInt64, path: String) throws {
        _ = try checkLibc(Int(ftruncate(file.rawValue, off_t(size))), "ftruncate", object: path)
    }
    /// Frees [offset, offset + length) of `file`, which then reads as zeros; its size stays.
    public static func punchHole(_ file: FileDescriptor, offset: UInt64, length: UInt64, path: String) throws {
        let punchKeepingSize: Int32 = 0x02 | 0x01  // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        _ = try Kernel.syscall(285 /* fallocate */, file.rawValue, punchKeepingSize, Int64(offset), Int64(length),
                               name: "fallocate(PUNCH_HOLE)", object: "\(path) at \(offset)")
    }
    /// Moves up to `length` bytes from a pipe into `file` at `offset` (advanced):
    /// nil when none are there yet, 0 at the end of the stream.
    public static func spliceToFile(from pipe: FileDescriptor, to file: FileDescriptor, offset: inout Int64, length: Int,
                                    object: String) throws -> Int? {
        var at = offset
        let n = withUnsafeMutablePointer(to: &at) {
            Kernel.rawSyscall(SYS_splice, [pipe, 0, file, $0, length, CRYO_SPLICE_F_MOVE | CRYO_SPLICE_F_NONBLOCK])
        }
        if n == -Int(EAGAIN) || n == -Int(EINTR) { return nil }
        if n > 0 { offset = at }
        return try check(n, "splice", object: object)
    }
    /// Waits up to `milliseconds` for input (or a hang-up) on `fd`.
    public static func waitReadable(_ fd: FileDescriptor, milliseconds: Int32, object: String) throws -> Bool {
        var entry = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        let n = Glibc.poll(&entry, 1, milliseconds)
        if n < 0 && errno == EINTR { return false }
        return try checkLibc(Int(n), "poll", object: object) > 0
    }
}

/// Descriptors of other processes and process handles.
public enum Pidfd {
    public static func open(_ pid: pid_t) throws -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try Kernel.syscall(SYS_pidfd_open, pid, 0, name: "pidfd_open", pid: pid)))
    }
    /// pidfd_open with flags: PIDFD_NONBLOCK (O_NONBLOCK), PIDFD_THREAD (O_EXCL).
    public static func open(_ pid: pid_t, flags: Int32) throws -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try Kernel.syscall(SYS_pidfd_open, pid, flags, name: "pidfd_open", pid: pid)))
    }
    /// Whether a pidfd is of pidfs (Linux 6.9+), where its inode tells its process; before, all shared one.
    public static func isOnPidfs(_ pidfd: FileDescriptor, object: String) throws -> Bool {
        var buffer = [UInt64](repeating: 0, count: 16)  // struct statfs begins with f_type
        try buffer.withUnsafeMutableBytes { try Kernel.syscall(SYS_fstatfs, pidfd, $0.baseAddress, name: "fstatfs", object: object) }
        return buffer[0] == 0x5049_4446  // PID_FS_MAGIC
    }
    /// The wait status the kernel kept for the process of a pidfd that has exited (PIDFD_GET_INFO
    /// with PIDFD_INFO_EXIT, Linux 6.15+); nil while it runs, or when the kernel kept none.
    public static func exitStatus(_ pidfd: FileDescriptor, object: String) throws -> Int32? {
        // struct pidfd_info as of Linux 6.15 (64 bytes): mask at 0, exit_code at 60; later kernels only append.
        var info = [UInt8](repeating: 0, count: 64)
        let infoExit: UInt64 = 1 << 3
        withUnsafeBytes(of: infoExit.littleEndian) { info.replaceSubrange(0..<8, with: $0) }
        let getInfo = UInt(0xC000_FF0B) | UInt(info.count) << 16  // _IOWR(0xFF, 11, 64 bytes)
        let result = info.withUnsafeMutableBytes { Kernel.rawSyscall(SYS_ioctl, [pidfd, getInfo, $0.baseAddress]) }
        // ESRCH: reaped and nothing kept; ENOTTY/EINVAL: a kernel without PIDFD_GET_INFO.
        if result == -Int(ESRCH) || result == -Int(ENOTTY) || result == -Int(EINVAL) { return nil }
        _ = try check(result, "ioctl(PIDFD_GET_INFO)", object: object)
        let mask = info[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        guard mask & infoExit != 0 else { return nil }
        return info[60..<64].enumerated().reduce(Int32(0)) { $0 | Int32($1.element) << (8 * Int32($1.offset)) }
    }
    /// A duplicate of another process's descriptor: same open file description.
    public static func getfd(_ pidfd: FileDescriptor, pid: pid_t, fd: Int32) throws -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try Kernel.syscall(SYS_pidfd_getfd, pidfd, fd, 0, name: "pidfd_getfd", pid: pid, object: "fd \(fd)")))
    }
    /// A duplicate of descriptor `fd` of process `pid`, through a pidfd opened for the purpose.
    public static func copy(of fd: Int32, from pid: pid_t) throws -> FileDescriptor {
        let pidfd = try open(pid)
        defer { try? pidfd.close() }
        return try getfd(pidfd, pid: pid, fd: fd)
    }
    /// Frees the memory of a process that is being killed in the caller's time (process_mrelease),
    /// alongside the process's own exit.
    public static func releaseMemory(_ pidfd: FileDescriptor, pid: pid_t) throws {
        try Kernel.syscall(SYS_process_mrelease, pidfd, 0, name: "process_mrelease", pid: pid)
    }
    /// Sends `fd` (SCM_RIGHTS, one byte of data) over a unix socket to the process `pid` at its other end.
    public static func send(_ fd: FileDescriptor, over socket: FileDescriptor, to pid: pid_t) throws {
        try send(fd, over: socket, byte: UInt8(ascii: "F"), pid: pid)
    }
    /// The same with `byte` as the data, which says what the descriptor is for.
    public static func send(_ fd: FileDescriptor, over socket: FileDescriptor, byte: UInt8, pid: pid_t? = nil) throws {
        try send([fd][...], over: socket, byte: byte, pid: pid)
    }
    /// Sends `fds` (at most 253, the kernel's SCM_MAX_FD) in one message (SCM_RIGHTS, one byte of data)
    /// to the process `pid` at the socket's other end.
    public static func send(_ fds: ArraySlice<FileDescriptor>, over socket: FileDescriptor, to pid: pid_t) throws {
        try send(fds, over: socket, byte: UInt8(ascii: "F"), pid: pid)
    }
    /// The same with `byte` as the data.
    public static func send(_ fds: ArraySlice<FileDescriptor>, over socket: FileDescriptor, byte: UInt8, pid: pid_t?) throws {
        precondition(!fds.isEmpty && fds.count <= 253)
        // One cmsghdr (len, level, type), then the descriptors, padded to 8 bytes.
        var control = [UInt64](repeating: 0, count: 2 + (fds.count + 1) / 2)
        control[0] = UInt64(MemoryLayout<cmsghdr>.size + 4 * fds.count) // CMSG_LEN
        control[1] = UInt64(UInt32(SOL_SOCKET)) | UInt64(UInt32(SCM_RIGHTS)) << 32
        control.withUnsafeMutableBytes { raw in
            for (i, fd) in fds.enumerated() { raw.storeBytes(of: fd.rawValue, toByteOffset: 16 + 4 * i, as: Int32.self) }
        }
        var byte = byte
        try withUnsafeMutablePointer(to: &byte) { byte in
            try control.withUnsafeMutableBytes { control in
                var vector = iovec(iov_base: byte, iov_len: 1)
                try withUnsafeMutablePointer(to: &vector) { vector in
                    var message = msghdr(msg_name: nil, msg_namelen: 0, msg_iov: vector, msg_iovlen: 1,
                                         msg_control: control.baseAddress, msg_controllen: control.count, msg_flags: 0)
                    try withUnsafePointer(to: &message) {
                        try Kernel.syscall(SYS_sendmsg, socket, $0, MSG_NOSIGNAL, name: "sendmsg(SCM_RIGHTS)", pid: pid,
                                           object: fds.count == 1 ? "fd \(fds.first!.rawValue)" : "\(fds.count) fds from fd \(fds.first!.rawValue)",
                                           retryingInterrupts: true)
                    }
                }
            }
        }
    }
    /// One message of up to `capacity` bytes and the descriptor that came with it (SCM_RIGHTS, close-on-exec);
    /// no bytes at end of file.
    public static func receive(over socket: FileDescriptor, capacity: Int) throws -> (bytes: [UInt8], fd: FileDescriptor?) {
        var bytes = [UInt8](repeating: 0, count: capacity)
        var control = [UInt64](repeating: 0, count: 4)
        let count = try bytes.withUnsafeMutableBytes { data in
            try control.withUnsafeMutableBytes { control in
                var vector = iovec(iov_base: data.baseAddress, iov_len: data.count)
                return try withUnsafeMutablePointer(to: &vector) { vector in
                    var message = msghdr(msg_name: nil, msg_namelen: 0, msg_iov: vector, msg_iovlen: 1,
                                         msg_control: control.baseAddress, msg_controllen: control.count, msg_flags: 0)
                    return try withUnsafeMutablePointer(to: &message) {
                        try Kernel.syscall(SYS_recvmsg, socket, $0, MSG_CMSG_CLOEXEC, name: "recvmsg(SCM_RIGHTS)",
                                           object: "fd \(socket.rawValue)", retryingInterrupts: true)
                    }
                }
            }
        }
        // One cmsghdr: length, then level and type, then the descriptor.
        let received = control[0] >= UInt64(MemoryLayout<cmsghdr>.size + 4)
            && control[1] == UInt64(UInt32(SOL_SOCKET)) | UInt64(UInt32(SCM_RIGHTS)) << 32
        return (Array(bytes.prefix(Int(count))), received ? FileDescriptor(rawValue: Int32(truncatingIfNeeded: control[2])) : nil)
    }
    /// pidfd_send_signal(2).
    public static func signal(_ pidfd: FileDescriptor, _ signal: Int32) throws {
        try Kernel.syscall(SYS_pidfd_send_signal, pidfd, signal, 0, 0, name: "pidfd_send_signal")
    }
    /// Whether two descriptors of two processes are the same open file description.
    public static func sameFile(_ pid1: pid_t, _ fd1: Int32, _ pid2: pid_t, _ fd2: Int32) throws -> Bool {
        try Kernel.syscall(SYS_kcmp, pid1, pid2, 0 /* KCMP_FILE */, fd1, fd2, name: "kcmp(KCMP_FILE)", pid: pid1, object: "fd \(fd1)") == 0
    }
    /// kcmp(KCMP_FILE) as an order: 0 the same description, 1 the first comes before the second, 2 after.
    public static func compareFiles(_ pid1: pid_t, _ fd1: Int32, _ pid2: pid_t, _ fd2: Int32) throws -> Int {
        try Kernel.syscall(SYS_kcmp, pid1, pid2, 0 /* KCMP_FILE */, fd1, fd2, name: "kcmp(KCMP_FILE)", pid: pid1, object: "fd \(fd1)")
    }
    /// Whether `holder`'s `fd` (by default `pid`'s own) is the file an epoll instance (`pid`'s `epollFd`)
    /// watches as its `occurrence`-th target registered under fd number `targetFd` (KCMP_EPOLL_TFD).
    public static func epollTargetIsOpen(_ pid: pid_t, fd: Int32, epollFd: Int32, targetFd: Int32, occurrence: Int,
                                         holder: pid_t? = nil) throws -> Bool {
        // struct kcmp_epoll_slot { __u32 efd, tfd; __u64 toff; }
        var slot: (UInt32, UInt32, UInt64) = (UInt32(bitPattern: epollFd), UInt32(bitPattern: targetFd), UInt64(occurrence))
        let holder = holder ?? pid
        return try withUnsafeMutablePointer(to: &slot) { pointer in
            try Kernel.syscall(SYS_kcmp, holder, pid, 7 /* KCMP_EPOLL_TFD */, fd, UnsafeMutableRawPointer(pointer),
                               name: "kcmp(KCMP_EPOLL_TFD)", pid: pid,
                               object: "epoll fd \(epollFd) target fd \(targetFd) against pid \(holder) fd \(fd)") == 0
        }
    }
    /// Whether two processes share one resource: KCMP_VM 1, KCMP_FILES 2, KCMP_FS 3.
    public static func share(_ pid1: pid_t, _ pid2: pid_t, resource: Int32) throws -> Bool {
        try Kernel.syscall(SYS_kcmp, pid1, pid2, resource, 0, 0, name: "kcmp(\(resource))", pid: pid1) == 0
    }
    /// kcmp of one resource as an order: 0 the same object, 1 the first comes before the second, 2 after.
    public static func compare(_ pid1: pid_t, _ pid2: pid_t, resource: Int32) throws -> Int {
        try Kernel.syscall(SYS_kcmp, pid1, pid2, resource, 0, 0, name: "kcmp(\(resource))", pid: pid1)
    }
}

public enum Processes {
    /// setns(2): joins the namespace open at `fd` (this thread only, for most kinds).
    public static func joinNamespace(_ fd: FileDescriptor, type: Int32, name: String, object: String) throws {
        try Kernel.syscall(SYS_setns, fd, type, name: name, object: object)
    }
    /// fork(2); the child gets 0.
    public static func fork() throws -> pid_t {
        pid_t(try checkLibc(Int(Glibc.fork()), "fork"))
    }
    /// A child that unshares a time namespace for the children it would have, then waits to be
    /// killed: a namespace whose offsets can still be written, since no task is in it.
    public static func forkUnsharingTimeNamespace() throws -> pid_t {
        let child = try fork()
        if child == 0 {
            // A fork of a threaded process: raw syscalls only.
            if cryo_syscall(Int(SYS_unshare), 0x80 /* CLONE_NEWTIME */, 0, 0, 0, 0, 0) != 0 { _exit(1) }
            while true { pause() }
        }
        return child
    }
    public static func kill(_ pid: pid_t, _ signal: Int32) throws {
        _ = try checkLibc(Int(Glibc.kill(pid, signal)), "kill", pid: pid)
    }
    public static func isAlive(_ pid: pid_t) -> Bool {
        Glibc.kill(pid, 0) == 0 || errno == EPERM
    }
    /// clone3 with an exact pid; the child parks in a raw read() on `park`.
    public static func cloneParked(pid: pid_t, flags: UInt64 = 0, park: FileDescriptor) throws -> pid_t {
        pid_t(try check(cryo_clone3_parked(pid, flags, park.rawValue, SIGCHLD), "clone3(set_tid=\(pid))", pid: pid))
    }
    /// A child parked like the above (any pid) that, once `park` gives a byte or EOF, ends as
    /// the wait status `status` says: a stand-in for a process that had exited with it.
    public static func cloneParkedEnding(park: FileDescriptor, status: Int32) throws -> pid_t {
        pid_t(try check(cryo_clone3_parked_ending(park.rawValue, status), "clone3 (stand-in ending with status \(status))"))
    }
    /// The init (pid 1) of a new pid namespace, parked like the above until `park`
    /// reaches EOF; it then reaps every child and exits with `rootPid`'s status.
    public static func cloneNamespaceInit(park: FileDescriptor, rootPid: pid_t) throws -> pid_t {
        pid_t(try check(cryo_clone3_namespace_init(park.rawValue, rootPid), "clone3(CLONE_NEWPID)"))
    }
    public static func resourceLimit(_ pid: pid_t, _ resource: Int32) throws -> (soft: UInt64, hard: UInt64) {
        var old: [UInt64] = [0, 0]
        try old.withUnsafeMutableBufferPointer {
            try Kernel.syscall(SYS_prlimit64, pid, resource, 0, $0.baseAddress, name: "prlimit64(\(resource))", pid: pid)
        }
        return (old[0], old[1])
    }
    /// A thread's CPU affinity (sched_getaffinity), one bit per CPU, up to 1024 CPUs; 0 is the caller.
    public static func affinity(_ tid: pid_t) throws -> [UInt64] {
        var mask = [UInt64](repeating: 0, count: 16)
        try mask.withUnsafeMutableBufferPointer {
            try Kernel.syscall(SYS_sched_getaffinity, tid, 128, $0.baseAddress, name: "sched_getaffinity", pid: tid)
        }
        return mask
    }
    public static func setAffinity(_ tid: pid_t, _ mask: [UInt64]) throws {
        try mask.withUnsafeBufferPointer {
            try Kernel.syscall(SYS_sched_setaffinity, tid, $0.count * 8, $0.baseAddress, name: "sched_setaffinity", pid: tid)
        }
    }
    public static func setResourceLimit(_ pid: pid_t, _ resource: Int32, soft: UInt64, hard: UInt64) throws {
        let new: [UInt64] = [soft, hard]
        try new.withUnsafeBufferPointer {
            try Kernel.syscall(SYS_prlimit64, pid, resource, $0.baseAddress, 0, name: "prlimit64(\(resource))", pid: pid)
        }
    }
}
