import CryoInjector
import CryoSystem
import FoundationEssentials
import Glibc

/// The ring of an AIO context (io_setup): a mapping the kernel made, whose
/// address is the context's id. At dump its header gives the number of
/// events it holds; a ring with completed events not read yet is refused
/// (the kernel keeps its own copy of the tail, which user space cannot set).
/// At restore the task makes a new context with io_setup, whose ring is the
/// same size for the same event count on a machine with as many CPUs, and
/// moves it to the old address with mremap (the kernel follows the move, so
/// the old id works again). The new ring starts empty, as the old one was.
/// Requests still in flight at dump (O_DIRECT I/O, IOCB_CMD_POLL) cannot be
/// seen from outside the kernel and do not come back.
enum AioRing {
    static let magic: UInt32 = 0xa10a_10a1
    static let headerBytes = 32  // struct aio_ring up to io_events[]
    static let syscallSetup = 206, syscallDestroy = 207, syscallMremap = 25

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

    /// The ring's event count, read from the frozen task; what cannot come back is refused.
    static func dump(pid: pid_t, mapping m: MemoryRecord.Mapping) throws -> UInt32 {
        let address = "0x\(hex(m.start))-0x\(hex(m.end))"
        let header = try header(pid: pid, at: m.start)
        guard header.magic == magic, header.events > 2,
              UInt64(headerBytes) + UInt64(header.events) * 32 <= m.length else {
            throw CryoError("pid \(pid): mapping \(address) (/[aio]) does not hold an AIO ring header (magic \(String(header.magic, radix: 16)))")
        }
        if header.head != header.tail {
            let unread = (header.tail &+ header.events &- header.head) % header.events
            throw CryoError("pid \(pid): mapping \(address) is the ring of an AIO context (io_setup) holding \(unread) completed "
                + "events not read yet (io_getevents), not supported yet")
        }
        return header.events
    }

    /// Makes the context again in the restored task and moves its ring to the recorded address.
    static func restore(_ m: MemoryRecord.Mapping, events: UInt32, tracee: Tracee, parasite: Parasite) throws {
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
    }
}
