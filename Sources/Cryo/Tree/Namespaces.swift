import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

private let cloneNewUTS: Int32 = 0x0400_0000

/// The namespaces of a dumped tree. A tree that shares cryo's namespaces
/// needs nothing here. A tree in a UTS namespace of its own gets it back:
/// the root is cloned into a new one that is given the old host and domain
/// names. Any other namespace of its own (mount, network, IPC, user, cgroup, pid),
/// and a process in another namespace than the root, is refused at dump
/// in one line: restoring it into cryo's would be silently wrong. Time namespaces are checked with the task state.
public struct NamespaceRecord: Codable, Sendable {
    public struct UTS: Codable, Sendable, Equatable {
        public var hostname: String
        public var domainname: String
    }
    /// Set when the tree has a UTS namespace of its own.
    public var uts: UTS?

    /// Namespace kinds as /proc/PID/ns names them; `supported` ones may differ from cryo's.
    static let checked: [(name: String, what: String, supported: Bool)] = [
        ("uts", "UTS (host name)", true), ("mnt", "mount", false), ("net", "network", false),
        ("ipc", "IPC", false), ("user", "user", false), ("cgroup", "cgroup", false),
        // The image holds pids as cryo sees them: a tree in a nested pid namespace (one that
        // `restore --pidns` made, or `unshare -pf`) would come back with other pids than it knows.
        ("pid", "pid", false),
    ]

    /// The clone flags that put the restored root into namespaces of its own.
    var cloneFlags: UInt64 { uts != nil ? UInt64(cloneNewUTS) : 0 }

    static func identity(_ pid: pid_t, _ name: String) throws -> UInt64 {
        UInt64(try Files.stat("/proc/\(pid)/ns/\(name)").st_ino)
    }

    /// Checks that every live process shares the root's namespaces and the root
    /// shares cryo's where cryo cannot rebuild them; reads what it can rebuild.
    static func dump(root: pid_t, live: [(pid: pid_t, comm: String)]) throws -> NamespaceRecord {
        var record = NamespaceRecord()
        for kind in checked {
            let mine = try identity(getpid(), kind.name)
            let roots = try identity(root, kind.name)
            for p in live {
                let theirs = try identity(p.pid, kind.name)
                if theirs != roots {
                    throw CryoError("pid \(p.pid) (\(p.comm)) is in another \(kind.what) namespace than the root "
                        + "(\(kind.name):[\(theirs)], the root's \(kind.name):[\(roots)]); not supported yet")
                }
            }
            guard roots != mine else { continue }
            guard kind.supported else {
                if kind.name == "pid" {
                    let nspid = ((try? ProcStatus(pid: root).values["NSpid"]) ?? nil)?.split(whereSeparator: \.isWhitespace).joined(separator: " ")
                    throw CryoError("pid \(root) is in a nested pid namespace (pid:[\(roots)], NSpid \(nspid ?? "?")): "
                        + "the image would hold the pids cryo sees, not the ones the tree knows; not supported yet")
                }
                throw CryoError("pid \(root) is in a \(kind.what) namespace of its own (\(kind.name):[\(roots)]); "
                    + "not supported yet")
            }
            if kind.name == "uts" {
                record.uts = try inNamespace(of: root, kind.name, cloneNewUTS) {
                    var names = utsname()
                    uname(&names)
                    return UTS(hostname: cString(names.nodename), domainname: cString(names.__domainname))
                }
            }
        }
        return record
    }

    /// What the restored root does right after it is cloned into new namespaces.
    func restore(root pid: pid_t, place: ([UInt8]) throws -> UInt64,
                 inject: (_ number: Int, _ arguments: [UInt64], _ what: String) throws -> Void) throws {
        if let uts {
            for (number, name, what) in [(170, uts.hostname, "sethostname"), (171, uts.domainname, "setdomainname")] {
                let bytes = Array(name.utf8)
                try inject(number, [try place(bytes + [0]), UInt64(bytes.count)], what)
            }
        }
    }
}

private func cString<T>(_ tuple: T) -> String {
    withUnsafeBytes(of: tuple) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
}

/// A closure for a thread started with pthread_create.
private final class ThreadJob: @unchecked Sendable {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// Runs `body` on a thread of its own that first joins `pid`'s namespace of
/// `kind`: the namespace changes only for that thread, which ends afterwards.
func inNamespace<T>(of pid: pid_t, _ kind: String, _ type: Int32, _ body: @escaping () throws -> T) throws -> T {
    let namespace = try Files.open("/proc/\(pid)/ns/\(kind)", .readOnly)
    defer { try? namespace.close() }
    var result: Result<T, Error> = .failure(CryoError("pid \(pid): no thread ran in its \(kind) namespace"))
    let job = ThreadJob {
        do { try Processes.joinNamespace(namespace, type: type, name: "setns(\(kind))", object: "pid \(pid)") } catch {
            result = .failure(error)
            return
        }
        result = Result { try body() }
    }
    var thread = pthread_t()
    let started = pthread_create(&thread, nil, { context in
        Unmanaged<ThreadJob>.fromOpaque(context!).takeRetainedValue().run()
        return nil
    }, Unmanaged.passRetained(job).toOpaque())
    guard started == 0 else { throw SyscallError("pthread_create", errno: Errno(rawValue: started)) }
    pthread_join(thread, nil)
    return try result.get()
}
