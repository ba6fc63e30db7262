import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import Logging
import SystemPackage

// Post-copy (`migrate --lazy-pages`): pages written since the last pre-copy
// round that lazy restore would load through a userfaultfd anyway are left out
// of the frozen image. The destination starts the tree without them; the
// source, its tree still frozen, streams them in address order and answers
// the destination's requests first (a fault waiting on a page). Once the
// destination has every page it says so and the source tree goes. Losing the
// connection after the start kills the tree on both sides: neither holds all
// of its memory any more.

/// Destination: pages not here yet, by process; the lazy loader waits here for them.
public final class RemotePages: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Per pid (as in the image): page offset in its pages file → page address, still missing.
    private var missing: [Int32: [UInt64: UInt64]] = [:]
    private var byAddress: [Int32: [UInt64: UInt64]] = [:]
    private var requested: [Int32: Set<UInt64>] = [:]
    private var failure: Error?
    /// Sends one page request (pid, address, length) to the source.
    var request: ((Int32, UInt64, UInt64) throws -> Void)?
    public private(set) var requests = 0
    public init(placeholder: Void = ()) {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Pages at `offset` of pid's pages file hold nothing yet; they belong at `address`.
    func add(pid: Int32, offset: UInt64, address: UInt64, length: UInt64) {
        locked {
            for page in stride(from: UInt64(0), to: length, by: 4096) {
                missing[pid, default: [:]][offset + page] = address + page
                byAddress[pid, default: [:]][address + page] = offset + page
            }
        }
    }

    public var missingBytes: UInt64 { locked { missing.values.reduce(0) { $0 + UInt64($1.count) * 4096 } } }

    /// The pages of [address, address + length) are in the pages file now.
    func arrived(pid: Int32, address: UInt64, length: UInt64) {
        locked {
            for page in stride(from: address, to: address + length, by: 4096) {
                if let offset = byAddress[pid]?.removeValue(forKey: page) { missing[pid]?[offset] = nil }
            }
            pthread_cond_broadcast(cond)
        }
    }

    /// The source is gone, or the migration ended otherwise: whoever waits for a page fails.
    func fail(_ error: Error) {
        locked {
            if failure == nil { failure = error }
            pthread_cond_broadcast(cond)
        }
    }

    /// Returns once [offset, offset + count) of pid's pages file holds its pages, asking the source for those missing.
    func require(pid: Int32, offset: UInt64, count: Int) throws {
        let first = offset & ~0xfff
        let end = offset + UInt64(count)
        var asks: [(UInt64, UInt64)] = []
        try locked {
            guard let pages = missing[pid], !pages.isEmpty else { return }
            if let failure { throw failure }
            for page in stride(from: first, to: end, by: 4096) {
                guard let address = pages[page], requested[pid, default: []].insert(page).inserted else { continue }
                if let last = asks.last, last.0 + last.1 == address { asks[asks.count - 1].1 += 4096 } else { asks.append((address, 4096)) }
            }
        }
        for (address, length) in asks {
            try request?(pid, address, length)
            locked { requests += 1 }
        }
        try locked {
            while true {
                let waiting = stride(from: first, to: end, by: 4096).contains { missing[pid]?[$0] != nil }
                if !waiting { return }
                if let failure { throw failure }
                pthread_cond_wait(cond, mutex)
            }
        }
    }
}

/// Source: what the frozen image left out, to send after the start.
struct PostCopySource {
    /// [pid, address, length], in address order per pid.
    var ranges: [(pid: Int32, address: UInt64, length: UInt64)] = []
    var bytes: UInt64 { ranges.reduce(0) { $0 + $1.length } }

    /// Is [address, address + length) of `pid` inside one range left out? (Ranges that touch are merged.)
    func covers(pid: Int32, address: UInt64, length: UInt64) -> Bool {
        var low = 0, high = ranges.count
        while low < high {
            let mid = (low + high) / 2
            let r = ranges[mid]
            if r.pid < pid || (r.pid == pid && r.address + r.length <= address) { low = mid + 1 } else { high = mid }
        }
        guard low < ranges.count else { return false }
        let r = ranges[low]
        return r.pid == pid && r.address <= address && address + length <= r.address + r.length
    }

    /// Of `toSend` ([offset, length] of the dump's pages file of `pid`), the parts lazy restore would load
    /// through a userfaultfd (LazySplit over the task file: private anonymous memory, but not the pages
    /// the restore itself touches) are left out and noted here; the rest is returned, to go now.
    mutating func split(_ toSend: [[UInt64]], pid: Int32, task: TaskImage) -> (now: [[UInt64]], omitted: [[UInt64]]) {
        let lazy = LazySplit(task: task).pending.sorted { $0.offset < $1.offset }
        var now: [[UInt64]] = [], omitted: [[UInt64]] = []
        var j = 0
        for range in toSend {
            var cursor = range[0]
            let end = range[0] + range[1]
            while j < lazy.count && lazy[j].offset + (lazy[j].end - lazy[j].start) <= cursor { j += 1 }
            var k = j
            while cursor < end {
                guard k < lazy.count, lazy[k].offset < end else { now.append([cursor, end - cursor]); break }
                let lazyStart = max(cursor, lazy[k].offset), lazyEnd = min(end, lazy[k].offset + (lazy[k].end - lazy[k].start))
                if lazyStart > cursor { now.append([cursor, lazyStart - cursor]) }
                if lazyEnd > lazyStart {
                    omitted.append([lazyStart, lazyEnd - lazyStart])
                    let address = lazy[k].start + (lazyStart - lazy[k].offset)
                    if let last = ranges.last, last.pid == pid, last.address + last.length == address {
                        ranges[ranges.count - 1].length += lazyEnd - lazyStart
                    } else {
                        ranges.append((pid, address, lazyEnd - lazyStart))
                    }
                }
                cursor = max(cursor, lazyEnd)
                k += 1
            }
        }
        return (now, omitted)
    }
}
