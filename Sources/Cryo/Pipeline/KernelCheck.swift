import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// One kernel feature cryo relies on and whether it works here.
public struct FeatureCheck: Codable, Sendable {
    public var name: String
    public var ok: Bool
    public var required: Bool
    public var detail: String
}

/// Probes each feature for real (a parked child is created, seized, read and killed).
public enum KernelCheck {
    public static func run() -> [FeatureCheck] {
        var results: [FeatureCheck] = []
        func add(_ name: String, required: Bool = true, _ probe: () throws -> String) {
            do { results.append(FeatureCheck(name: name, ok: true, required: required, detail: try probe())) } catch {
                results.append(FeatureCheck(name: name, ok: false, required: required, detail: "\(error)"))
            }
        }
        let ends: (read: FileDescriptor, write: FileDescriptor)
        do { ends = try FileObjects.pipe(object: "park") } catch { return [FeatureCheck(name: "pipe2", ok: false, required: true, detail: "\(error)")] }
        defer { try? ends.read.close(); try? ends.write.close() }

        var child: pid_t = 0
        add("clone3 with set_tid (exact pids)") {
            // Another cryo check (or any fork) may take the pid between the look and the clone.
            var attempts = 0
            while true {
                let wanted = try freePid()
                do {
                    child = try Processes.cloneParked(pid: wanted, park: ends.read)
                } catch let error as SyscallError where error.errno == .fileExists && attempts < 20 {
                    attempts += 1
                    continue
                }
                guard child == wanted else { throw CryoError("asked for pid \(wanted), got \(child)") }
                return "new task got pid \(wanted) as asked"
            }
        }
        if child == 0 { child = (try? Processes.cloneParked(pid: 0, park: ends.read)) ?? 0 }
        defer {
            if child > 0 {
                kill(child, SIGKILL)
                _ = try? waitFor(child)
            }
        }
        add("ptrace seize and interrupt") {
            guard child > 0 else { throw CryoError("no task to trace") }
            let start = ContinuousClock.now
            let tracee = try Tracee.seize(child)
            try tracee.detach()
            return String(printf: "seize + interrupt + wait + detach took %.0f µs", seconds(since: start) * 1e6)
        }
        add("process_vm_readv") {
            // A literal in read-only data sits at the same address in the child.
            let probe: StaticString = "cryo process_vm_readv probe"
            let copy = try RemoteMemory.read(child, at: UInt64(UInt(bitPattern: probe.utf8Start)), count: probe.utf8CodeUnitCount)
            guard copy == Array(UnsafeBufferPointer(start: probe.utf8Start, count: probe.utf8CodeUnitCount)) else {
                throw CryoError("read back different bytes")
            }
            return "read \(copy.count) bytes of the child's memory"
        }
        add("pidfd_open and pidfd_getfd") {
            let fd = try Pidfd.copy(of: ends.read.rawValue, from: child)
            try? fd.close()
            return "duplicated descriptor \(ends.read.rawValue) of pid \(child)"
        }
        add("PAGEMAP_SCAN (Linux 6.7+)") {
            let pagemap: FileDescriptor
            do { pagemap = try Files.open("/proc/self/pagemap", .readOnly) } catch let error as SyscallError
                where error.errno == .permissionDenied && !Caller.current.fullyPrivileged {
                // With file capabilities cryo is not dumpable, so its own /proc files are root's;
                // a dump opens its target's pagemap instead, which the user owns.
                return "not probed: cryo's own pagemap is root's (not dumpable, file capabilities); a dump reads its target's"
            }
            defer { try? pagemap.close() }
            var regions = [cryo_page_region](repeating: cryo_page_region(), count: 8)
            var arg = cryo_pm_scan_arg()
            let page = UInt64(UInt(bitPattern: withUnsafePointer(to: &arg) { $0 })) & ~0xfff
            arg.start = page
            arg.end = page + 4096
            arg.category_mask = UInt64(CRYO_PAGE_IS_PRESENT)
            arg.return_mask = UInt64(CRYO_PAGE_IS_PRESENT)
            let found = try regions.withUnsafeMutableBufferPointer { try Pagemap.scan(pagemap, &arg, into: $0) }
            return "scanned own stack page: \(found) present region"
        }
        add("PAGEMAP_SCAN guard pages (Linux 6.15+)", required: false) {
            // Without it a guard page (MADV_GUARD_INSTALL, Linux 6.13) fails the dump with EIO.
            guard Pagemap.reportsGuards(pid: getpid()) else { throw CryoError("PAGE_IS_GUARD not known: a guard region fails the dump") }
            return "available (guard regions are left out of the pages and installed again)"
        }
        add("userfaultfd write-protect, async mode", required: false) {
            guard try Userfaultfd.offersAsyncWriteProtect() else { throw CryoError("UFFD_FEATURE_WP_ASYNC not offered") }
            return "available (pre-copy write tracking without soft-dirty)"
        }
        add("userfaultfd events (--lazy-pages)", required: false) {
            try LazyServer.check()
            return "available (lazy restore and eager restore's page filling)"
        }
        add("vDSO layout") {
            let names = try readMappings(pid: getpid(), withFlags: false).map(\.path).filter { $0.hasPrefix("[vvar") || $0 == "[vdso]" }
            guard names.contains("[vdso]") else { throw CryoError("no [vdso] mapping") }
            return names.joined(separator: " + ") + " (moved as one unit with mremap at restore)"
        }
        add("unix sockets (sock_diag, SO_PEEK_OFF)", required: false) {
            let (a, b) = try Sockets.unixPair(type: Int32(SOCK_STREAM.rawValue), object: "a socketpair")
            defer { try? a.close(); try? b.close() }
            let st = try Files.stat(a, object: "a socketpair"), peer = try Files.stat(b, object: "a socketpair")
            let info = try SockDiag.unixSocket(inode: UInt32(truncatingIfNeeded: st.st_ino), object: "a socketpair")
            guard let found = info?.peer, UInt64(found) == UInt64(peer.st_ino) else { throw CryoError("no peer reported for a socketpair") }
            try Sockets.setOption(a, SOL_SOCKET, SO_PEEK_OFF, Int32(0), name: "SO_PEEK_OFF", object: "a socketpair")
            return "a socketpair's peer found by inode, peek offset settable (for processes with unix sockets)"
        }
        let capabilities: [(Int, String, Bool)] = [(19, "CAP_SYS_PTRACE", true), (40, "CAP_CHECKPOINT_RESTORE", true),
                                                   (21, "CAP_SYS_ADMIN", false), (24, "CAP_SYS_RESOURCE", false)]
        let effective = (try? ProcStatus(pid: getpid()).hex("CapEff")) ?? 0
        for (bit, name, required) in capabilities {
            let held = effective & (1 << UInt64(bit)) != 0
            let why = switch name {
            case "CAP_SYS_RESOURCE": "raising a hard rlimit above cryo's own"
            case "CAP_SYS_ADMIN": "not needed for ordinary processes"
            default: "tracing and restoring with exact pids"
            }
            results.append(FeatureCheck(name: "capability \(name)", ok: held, required: required,
                                        detail: held ? "held" : "missing (\(why))"))
        }
        return results
    }

    /// A pid nobody uses, for the set_tid probe.
    static func freePid() throws -> pid_t {
        let max = Int32((try? Files.readString("/proc/sys/kernel/pid_max").trimmed()).flatMap { Int32($0) } ?? 32768)
        // A random start in the upper half: concurrent checks rarely pick the same pid.
        let span = max - 1 - max / 2
        let start = Int32.random(in: 0..<span)
        for step in 0..<span {
            let candidate = max - 1 - (start + step) % span
            if !Files.exists("/proc/\(candidate)") { return candidate }
        }
        throw CryoError("no free pid found")
    }
}
