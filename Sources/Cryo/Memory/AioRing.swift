import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// The ring of an AIO context (io_setup): a mapping the kernel made, whose
/// address is the context's id. At dump its header gives the number of
/// events it holds and where its head and tail are; the completed events not
/// reaped yet (between them) are kept. At restore the task makes a new
/// context with io_setup, whose ring is the same size for the same event
/// count on a machine with as many CPUs, and moves it to the old address with
/// mremap (the kernel follows the move, so the old id works again).
/// The kernel keeps its own copy of the tail, which user space cannot set, so
/// the new ring is brought to the old head and tail by completions: reads of
/// nothing (/dev/null, done at submission) submitted through the new context,
/// reaped by moving the ring's head as user-space reapers do, up to the old
/// head; then one per unreaped event, whose slots are overwritten with the
/// kept events. Requests still in flight at dump (O_DIRECT I/O,
/// IOCB_CMD_POLL) cannot be seen from outside the kernel and do not come back.
public struct AioRingContents: Codable, Sendable {
    public var ring: UInt64
    /// The ring's head at dump (its tail follows from the events).
    public var head: UInt32
    /// The completed events not reaped (struct io_event each, from the head on).
    public var events: Data
}

enum AioRing {
    static let magic: UInt32 = 0xa10a_10a1
    static let headerBytes = 32  // struct aio_ring up to io_events[]
    static let eventBytes = 32  // struct io_event: data, obj, res, res2
    static let iocbBytes = 64  // struct iocb
    static let headOffset: UInt64 = 8  // struct aio_ring's head
    static let syscallSetup = 206, syscallDestroy = 207, syscallMremap = 25, syscallSubmit = 209
    static let syscallOpen = 2, syscallClose = 3

    /// struct aio_ring: id, nr, head, tail, magic, compat_features, incompat_features, header_length.
    struct Header {
        var words: [UInt32]
        var events: UInt32 { words[1] }
        var head: UInt32 { words[2] }
        var tail: UInt32 { words[3] }
        var magic: UInt32 { words[4] }
    }

    static func header(pid: pid_t, at address: UInt64) throws -> Header {
        let bytes = try RemoteMemory.read(pid, at: address, count: headerBytes)
        return Header(words: bytes.withUnsafeBytes { raw in (0..<8).map { raw.load(fromByteOffset: $0 * 4, as: UInt32.self) } })
    }

    /// The ring's event count, and where it stands with its unreaped events (nil: at the start, empty), from the frozen task.
    static func dump(pid: pid_t, mapping m: MemoryRecord.Mapping) throws -> (events: UInt32, contents: AioRingContents?) {
        let address = "0x\(hex(m.start))-0x\(hex(m.end))"
        let header = try header(pid: pid, at: m.start)
        guard header.magic == magic, header.events > 2, header.tail < header.events,
              UInt64(headerBytes) + UInt64(header.events) * 32 <= m.length else {
            throw CryoError("pid \(pid): mapping \(address) (/[aio]) does not hold an AIO ring header (magic \(String(header.magic, radix: 16)))")
        }
        // User space may write any head: the kernel takes it modulo the ring's size.
        let head = header.head % header.events, tail = header.tail
        guard head != 0 || tail != 0 else { return (header.events, nil) }
        // Slots head..<tail, wrapping at the end of the ring.
        let slots = head <= tail ? [head..<tail] : [head..<header.events, 0..<tail]
        var events = Data()
        for range in slots where !range.isEmpty {
            events += try RemoteMemory.read(pid, at: m.start + UInt64(headerBytes) + UInt64(range.lowerBound) * UInt64(eventBytes),
                                            count: range.count * eventBytes)
        }
        return (header.events, AioRingContents(ring: m.start, head: head, events: events))
    }

    /// Makes the context again in the restored task and moves its ring to the recorded address.
    static func restore(_ m: MemoryRecord.Mapping, events: UInt32, contents: AioRingContents?, tracee: Tracee, parasite: Parasite) throws {
        let pid = tracee.pid
        let at = "AIO ring 0x\(hex(m.start))"
        // io_setup doubles what it is asked for (at least 4 per CPU), adds 2 and rounds the ring up to whole
        // pages, whose event count the header holds: asking for (count - 2) / 2 gives a ring of as many pages.
        let asked = UInt64(max(1, (events - 2) / 2))
        let out = try parasite.place([UInt8](repeating: 0, count: 8))
        let made = try tracee.syscall(syscallSetup, asked, out)
        if made < 0 { throw SyscallError("injected io_setup(\(asked)) for \(at)", errno: .init(rawValue: Int32(-made)), pid: pid) }
        let context = try RemoteMemory.read(pid, at: out, count: 8).withUnsafeBytes { $0.load(as: UInt64.self) }
        let header = try header(pid: pid, at: context)
        guard header.events == events else {
            _ = try? tracee.syscall(syscallDestroy, context)
            throw CryoError("pid \(pid): \(at): io_setup here makes a ring of \(header.events) events, the image's held \(events) "
                + "(restore on a machine with as many CPUs)")
        }
        if context != m.start {
            let moved = try tracee.syscall(syscallMremap, context, m.length, m.length, 3 /* MREMAP_MAYMOVE | MREMAP_FIXED */, m.start)
            if moved < 0 {
                _ = try? tracee.syscall(syscallDestroy, context)
                throw SyscallError("injected mremap(0x\(hex(context)) -> 0x\(hex(m.start))) of \(at)", errno: .init(rawValue: Int32(-moved)), pid: pid)
            }
        }
        if let contents { try refill(contents, events: events, tracee: tracee, parasite: parasite, at: at) }
    }

    /// Brings the new (empty) ring at `contents.ring` to the dumped head, then puts the unreaped events
    /// after it: completions move the kernel's tail, writes of the ring's head reap those before it.
    private static func refill(_ contents: AioRingContents, events nr: UInt32, tracee: Tracee, parasite: Parasite, at: String) throws {
        let pid = tracee.pid, ring = contents.ring
        let unreaped = UInt32(contents.events.count / eventBytes)
        let path = try parasite.place(Array("/dev/null".utf8) + [0])
        let fd = try tracee.syscall(syscallOpen, path, UInt64(O_RDONLY | O_CLOEXEC))
        if fd < 0 { throw SyscallError("injected open(/dev/null) for \(at)", errno: .init(rawValue: Int32(-fd)), pid: pid) }
        defer { _ = try? tracee.syscall(syscallClose, UInt64(fd)) }
        // Each request: its iocb and a pointer to it, as many as the argument area holds at once.
        let base = parasite.placeAddress
        let perBatch = max(1, (parasite.argumentAreaSize - Int(base - parasite.argumentArea)) / (iocbBytes + 8))
        func complete(_ count: UInt32, reaping: Bool) throws {
            var done: UInt32 = 0
            while done < count {
                let batch = min(UInt32(perBatch), count - done, nr / 2)
                var bytes = [UInt8](repeating: 0, count: Int(batch) * (iocbBytes + 8))
                bytes.withUnsafeMutableBytes { raw in
                    for i in 0..<Int(batch) {
                        let iocb = i * iocbBytes
                        // IOCB_CMD_PREAD (0) of 0 bytes: aio_fildes at 20, aio_buf at 24, aio_nbytes 0.
                        raw.storeBytes(of: UInt32(truncatingIfNeeded: fd), toByteOffset: iocb + 20, as: UInt32.self)
                        raw.storeBytes(of: base, toByteOffset: iocb + 24, as: UInt64.self)
                        raw.storeBytes(of: base + UInt64(iocb), toByteOffset: Int(batch) * iocbBytes + i * 8, as: UInt64.self)
                    }
                }
                _ = try parasite.place(bytes)
                let submitted = try tracee.syscall(syscallSubmit, ring, UInt64(batch), base + UInt64(Int(batch) * iocbBytes))
                if submitted <= 0 {
                    throw SyscallError("injected io_submit(\(batch)) for \(at) (\(done) of \(count) completions made)",
                                       errno: Errno(rawValue: submitted == 0 ? EAGAIN : Int32(-submitted)), pid: pid)
                }
                done += UInt32(submitted)
                if reaping {
                    var tail = try header(pid: pid, at: ring).tail
                    try withUnsafeBytes(of: &tail) { try RemoteMemory.write(pid, at: ring + headOffset, $0) }
                }
            }
        }
        try complete(contents.head, reaping: true)
        try complete(unreaped, reaping: false)
        let now = try header(pid: pid, at: ring)
        guard now.head == contents.head, now.tail == (contents.head + unreaped) % nr else {
            throw CryoError("pid \(pid): \(at): brought back to head \(now.head) and tail \(now.tail), want \(contents.head) and "
                + "\((contents.head + unreaped) % nr)")
        }
        // The events from the head on, wrapping at the end of the ring.
        let first = Int(min(unreaped, nr - contents.head)) * eventBytes
        let slot = { (index: UInt32) in ring + UInt64(headerBytes) + UInt64(index) * UInt64(eventBytes) }
        try contents.events.withUnsafeBytes { raw in
            if first > 0 { try RemoteMemory.write(pid, at: slot(contents.head), UnsafeRawBufferPointer(rebasing: raw[..<first])) }
            if raw.count > first { try RemoteMemory.write(pid, at: slot(0), UnsafeRawBufferPointer(rebasing: raw[first...])) }
        }
    }
}
