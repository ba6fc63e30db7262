import ArgumentParser
import Cryo
import CryoSystem
import FoundationEssentials
import Glibc

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check", abstract: "Check the kernel features cryo relies on.")
    @Flag(help: "Print the results as JSON.") var json = false
    @Option(name: .customLong("feature"),
            help: "Check one feature by CRIU's name (`list` names them); exit status 0 when cryo can use it here.")
    var feature: String?
    @Flag(name: [.customLong("all"), .customLong("extra")], help: "Accepted for CRIU: cryo runs every check it has each time.")
    var all = false

    func run() throws {
        let results = KernelCheck.run()
        if let feature { try answer(feature, from: results) }
        if json {
            print(try encodeJSON(results))
        } else {
            for r in results {
                let mark = r.ok ? "ok  " : (r.required ? "FAIL" : "no  ")
                print("\(mark) \(r.name.padded(to: 40)) \(r.detail)")
            }
        }
        if results.contains(where: { !$0.ok && $0.required }) { throw ExitCode(1) }
    }

    /// CRIU's feature names, each answered by one of cryo's own checks, or
    /// by what cryo itself does not do whatever the kernel offers.
    static let features: [(name: String, answer: Answer)] = [
        ("mem_dirty_track", .check("userfaultfd write-protect, async mode")),
        ("uffd", .check("userfaultfd events (--lazy-pages)")),
        ("uffd-noncoop", .check("userfaultfd events (--lazy-pages)")),
        ("clone3_set_tid", .check("clone3 with set_tid (exact pids)")),
        ("pidfd_store", .check("pidfd_open and pidfd_getfd")),
        ("can_map_vdso", .check("vDSO layout")),
        ("sk_unix_file", .check("unix sockets (sock_diag, SO_PEEK_OFF)")),
        ("timens", .always("time namespaces come back: the root's own, and those a process unshared for its children")),
        ("get_rseq_conf", .always("rseq registrations come back (PTRACE_GET_RSEQ_CONFIGURATION), a thread in a critical section aborted out of it")),
        ("kcmp_epoll", .always("epoll watches come back, a descriptor watched by several processes too")),
        ("aio_remap", .always("AIO rings (io_setup) come back at their address")),
        ("fdinfo_lock", .always("flock, POSIX and OFD locks come back")),
        ("timerfd", .always("timerfds come back with their settings and expirations")),
        ("loginuid", .always("each process's loginuid comes back")),
        ("seccomp_filters", .check("capability CAP_SYS_ADMIN")),
        ("ns_pid", .cryoLacks("cryo refuses a tree in a nested pid namespace (its pids would change)")),
        ("tcp_half_closed", .always("half-closed connections (CLOSE_WAIT, FIN_WAIT1/2, LAST_ACK, CLOSING) come back with --tcp-established")),
        ("network_lock_nftables", .program("nft", "dump --network-lock nftables runs nft")),
        ("seccomp_suspend", .check("capability CAP_SYS_ADMIN")),
        ("pagemap_scan_guard_pages", .check("PAGEMAP_SCAN guard pages (Linux 6.15+)")),
        ("memfd_hugetlb", .always("MFD_HUGETLB memfds come back of huge pages when vm.nr_hugepages has them free")),
        ("cgroupns", .cryoLacks("cryo does not restore cgroup namespaces yet")),
    ]

    enum Answer {
        case check(String)
        case cryoLacks(String)
        /// What cryo does on every kernel it runs on (Linux 6.7+).
        case always(String)
        /// What needs a program that may be missing.
        case program(String, String)
    }

    func answer(_ name: String, from results: [FeatureCheck]) throws -> Never {
        if name == "list" {
            print(Self.features.map(\.name).joined(separator: " "))
            throw ExitCode.success
        }
        guard let answer = Self.features.first(where: { $0.name == name })?.answer else {
            throw CriuCommandLine.Refusal(description: "unknown feature \(name) (cryo check --feature list names them)")
        }
        switch answer {
        case .cryoLacks(let why):
            print("\(name) is not supported: \(why)")
            throw ExitCode(1)
        case .always(let what):
            print("\(name) is supported: \(what)")
            throw ExitCode.success
        case .program(let program, let what):
            let found: String? = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map { "\($0)/\(program)" }.first { Glibc.access($0, X_OK) == 0 }
            print("\(name) is \(found != nil ? "supported" : "not supported"): \(what)\(found.map { " (\($0))" } ?? ": \(program) is not installed")")
            throw found != nil ? ExitCode.success : ExitCode(1)
        case .check(let checkName):
            guard let result = results.first(where: { $0.name == checkName }) else {
                throw CriuCommandLine.Refusal(description: "feature \(name): no check named \(checkName)")
            }
            print("\(name) is \(result.ok ? "supported" : "not supported"): \(result.detail)")
            throw result.ok ? ExitCode.success : ExitCode(1)
        }
    }
}

func encodeJSON<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}
