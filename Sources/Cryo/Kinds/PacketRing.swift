import CCryo
import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

extension PacketSocketState {
    /// A PACKET_RX_RING or PACKET_TX_RING as it was requested (struct tpacket_req3: TPACKET_V1
    /// and V2 use its first four fields), read from sock_diag (PACKET_DIAG_RX_RING/TX_RING):
    /// getsockopt has no way to read a ring's geometry back.
    public struct Ring: Codable, Sendable, Equatable {
        public var blockSize: UInt32
        public var blockCount: UInt32
        public var frameSize: UInt32
        public var frameCount: UInt32
        /// TPACKET_V3 receive rings only: the block retire timeout in ms (the kernel's choice when
        /// asked for 0), the private area of each block and the feature word; 0 otherwise.
        public var retireTimeout: UInt32 = 0
        public var privateSize: UInt32 = 0
        public var features: UInt32 = 0

        init(_ d: packet_diag_ring) {
            blockSize = d.pdr_block_size
            blockCount = d.pdr_block_nr
            frameSize = d.pdr_frame_size
            frameCount = d.pdr_frame_nr
            retireTimeout = d.pdr_retire_tmo
            privateSize = d.pdr_sizeof_priv
            features = d.pdr_features
        }

        /// Bytes of the ring in a mapping (the receive ring first, then the send ring).
        var bytes: Int { Int(blockSize) * Int(blockCount) }
        var framesPerBlock: Int { Int(blockSize / frameSize) }
        /// Where frame `i` starts: frames never straddle blocks.
        func frameOffset(_ i: Int) -> Int { (i / framesPerBlock) * Int(blockSize) + (i % framesPerBlock) * Int(frameSize) }

        var request: tpacket_req3 {
            tpacket_req3(tp_block_size: blockSize, tp_block_nr: blockCount, tp_frame_size: frameSize, tp_frame_nr: frameCount,
                         tp_retire_blk_tov: retireTimeout, tp_sizeof_priv: privateSize, tp_feature_req_word: features)
        }

        /// What the kernel accepts at all, so a bad image fails before anything is made.
        var isPlausible: Bool {
            blockSize >= 4096 && blockSize % 4096 == 0 && blockCount > 0 && frameSize >= 16 && frameSize % 16 == 0
                && frameSize <= blockSize && UInt64(blockSize) * UInt64(blockCount) <= 1 << 40
                && UInt64(frameCount) == UInt64(blockCount) * UInt64(blockSize / frameSize)
        }

        var summary: String {
            "\(blockCount) block\(blockCount == 1 ? "" : "s") of \(blockSize), \(frameCount) frame\(frameCount == 1 ? "" : "s") of \(frameSize)"
                + (retireTimeout != 0 || privateSize != 0 || features != 0
                    ? ", retire \(retireTimeout) ms, private \(privateSize), features 0x\(String(features, radix: 16))" : "")
        }
    }

    /// PACKET_VERSION as kept (TPACKET_V1 is 0).
    var ringVersion: Int32 { options["PACKET_VERSION"] ?? 0 }
    /// Bytes a mapping of the rings covers: both, one after the other.
    var ringBytes: Int { (receiveRing?.bytes ?? 0) + (sendRing?.bytes ?? 0) }
}

/// What a ring holds at dump. Frames in flight are not kept: a ring must be empty (every
/// frame the kernel's) and the kernel's next frame (block) must be the first, the only
/// place a new ring starts from. A frame the task has not read, one it has not sent, or
/// a ring already turned past its start are refused; nothing is lost silently.
enum PacketRings {
    static let kernelOwned: UInt64 = 0  // TP_STATUS_KERNEL; TP_STATUS_AVAILABLE on a send ring
    static let userOwned: UInt64 = 1  // TP_STATUS_USER; TP_STATUS_SEND_REQUEST on a send ring

    /// Reads the rings through a mapping of cryo's own (its copy of the descriptor): the task's
    /// mapping may be missing, partial or unreadable, the ring is the same.
    static func check(_ fd: FileDescriptor, version: Int32, receive: PacketSocketState.Ring?, send: PacketSocketState.Ring?,
                      what: String) throws {
        let total = (receive?.bytes ?? 0) + (send?.bytes ?? 0)
        guard total > 0 else { return }
        let ring = try SharedMemory.mapShared(fd, length: total, writable: receive != nil, object: what)
        defer { SharedMemory.unmap(ring) }
        let base = ring.baseAddress!
        if let receive {
            if version == Int32(TPACKET_V3.rawValue) {
                try checkBlocks(fd, base, receive, what: what)
            } else {
                try checkFrames(fd, base, receive, version: version, what: what)
            }
        }
        if let send {
            // A send ring's frames are frames in every version (tpacket3_hdr under V3).
            let at = base + (receive?.bytes ?? 0)
            var pending = 0, used = 0
            for i in 0..<Int(send.frameCount) {
                let frame = at + send.frameOffset(i)
                if status(frame, version: version) != kernelOwned { pending += 1 }
                if length(frame, version: version) != 0 { used += 1 }
            }
            if pending > 0 {
                throw CryoError("\(what) holds \(pending) frame\(pending == 1 ? "" : "s") not sent yet in its PACKET_TX_RING; not supported")
            }
            // The kernel sends from its own position, which nothing reads or sets: a frame ever filled
            // (tp_len set) may have moved it, and a new ring would wait at frame 0 while the task fills the next.
            if used > 0 {
                throw CryoError("\(what) has sent frames from its PACKET_TX_RING (\(used) of \(send.frameCount) filled): "
                    + "where the kernel takes the next one cannot be set again; not supported")
            }
        }
    }

    /// tp_status of a frame: unsigned long in TPACKET_V1, u32 at 0 in V2, u32 at 20 in V3 (tpacket3_hdr).
    static func statusOffset(version: Int32) -> (offset: Int, wide: Bool) {
        switch version {
        case Int32(TPACKET_V1.rawValue): (0, true)
        case Int32(TPACKET_V2.rawValue): (0, false)
        default: (20, false)
        }
    }

    static func status(_ frame: UnsafeMutableRawPointer, version: Int32) -> UInt64 {
        let (offset, wide) = statusOffset(version: version)
        return wide ? frame.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                    : UInt64(frame.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    /// tp_len: u32 at 8 (V1), 4 (V2), 16 (V3).
    static func length(_ frame: UnsafeMutableRawPointer, version: Int32) -> UInt32 {
        let offset = version == Int32(TPACKET_V1.rawValue) ? 8 : version == Int32(TPACKET_V2.rawValue) ? 4 : 16
        return frame.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
    }

    /// TPACKET_V1/V2 receive ring: every frame the kernel's, and the kernel writing the next packet into frame 0.
    private static func checkFrames(_ fd: FileDescriptor, _ base: UnsafeMutableRawPointer, _ ring: PacketSocketState.Ring, version: Int32,
                                    what: String) throws {
        let unread = (0..<Int(ring.frameCount)).filter { status(base + ring.frameOffset($0), version: version) != kernelOwned }.count
        if unread > 0 { throw unreadFrames(unread, what: what) }
        let (offset, wide) = statusOffset(version: version)
        try expectFirst(fd, status: base + ring.frameOffset(Int(ring.frameCount) - 1) + offset, wide: wide,
                        header: base + ring.frameOffset(Int(ring.frameCount) - 1), headerBytes: 32, what: what)
    }

    /// TPACKET_V3 receive ring: no block handed to the task, the kernel filling block 0, and nothing in it yet.
    private static func checkBlocks(_ fd: FileDescriptor, _ base: UnsafeMutableRawPointer, _ ring: PacketSocketState.Ring, what: String) throws {
        // struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1 (block_status at 8, num_pkts at 12).
        var unread = 0
        for b in 0..<Int(ring.blockCount) {
            let block = base + b * Int(ring.blockSize)
            if block.loadUnaligned(fromByteOffset: 8, as: UInt32.self) != 0 {
                unread += max(1, Int(block.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
            }
        }
        if unread > 0 { throw unreadFrames(unread, what: what) }
        let last = base + (Int(ring.blockCount) - 1) * Int(ring.blockSize)
        try expectFirst(fd, status: last + 8, wide: false, header: last, headerBytes: 48, what: what)
        // Block 0 is the open one: its count is live (the kernel hands it over on its timer).
        let open = Int(base.loadUnaligned(fromByteOffset: 12, as: UInt32.self))
        if open > 0 { throw unreadFrames(open, what: what) }
    }

    private static func unreadFrames(_ count: Int, what: String) -> CryoError {
        CryoError("\(what) holds \(count) frame\(count == 1 ? "" : "s") not read yet in its PACKET_RX_RING; not supported")
    }

    /// Whether the kernel's next frame (block) is the first. poll reports POLLIN when the one before
    /// the kernel's is not the kernel's: the last frame is lent to the task for one poll, and is the
    /// one before only when the kernel is at the first. The kernel skips a frame that is not its own,
    /// so nothing lands there meanwhile; the status goes back only if the kernel did not write the
    /// frame since (header unchanged, status still the one cryo put).
    private static func expectFirst(_ fd: FileDescriptor, status: UnsafeMutableRawPointer, wide: Bool, header: UnsafeMutableRawPointer,
                                    headerBytes: Int, what: String) throws {
        func readable() throws -> Bool {
            var entry = [pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)]
            while try Files.poll(&entry, milliseconds: 0, object: what) == nil {}
            return entry[0].revents & Int16(POLLIN) != 0
        }
        if try readable() {
            throw CryoError("\(what): its PACKET_RX_RING reports a frame to read, yet every frame is the kernel's; not supported")
        }
        var before = [UInt8](UnsafeRawBufferPointer(start: header, count: headerBytes))
        let swapped = wide ? cryo_compare_exchange_u64(status, kernelOwned, userOwned) : cryo_compare_exchange_u32(status, 0, 1)
        guard swapped == 1 else { throw unreadFrames(1, what: what) }
        let first = try readable()
        let statusAt = status - header
        withUnsafeBytes(of: wide ? userOwned : UInt64(UInt32(userOwned))) { bytes in
            for i in 0..<(wide ? 8 : 4) { before[statusAt + i] = bytes[i] }
        }
        let unchanged = before == [UInt8](UnsafeRawBufferPointer(start: header, count: headerBytes))
        let back = unchanged && (wide ? cryo_compare_exchange_u64(status, userOwned, kernelOwned) : cryo_compare_exchange_u32(status, 1, 0)) == 1
        if !back {
            throw CryoError("\(what): a frame arrived in its PACKET_RX_RING while cryo looked at it; dump again")
        }
        if !first {
            throw CryoError("\(what): its PACKET_RX_RING was read past its first frame: where the kernel writes the next one "
                + "cannot be set again; not supported")
        }
    }
}

extension FileTableBuilder {
    /// The file table entry of the AF_PACKET socket whose rings `mapping` of `pid` maps: a socket
    /// dumped already (a descriptor of this process or of one before it in the tree). The mapping
    /// must be the whole of both rings from offset 0, as mmap makes it; anything else is refused, and so is
    /// a private (MAP_PRIVATE) one that the task wrote to.
    func packetRingMapping(pid: pid_t, mapping m: MemoryRecord.Mapping) throws -> Int {
        let address = "0x\(String(m.start, radix: 16))-0x\(String(m.end, radix: 16))"
        let object = "pid \(pid): mapping \(address) (\(m.path ?? "socket"))"
        guard let inode = m.inode, let found = PacketSocketState.entries(table.files).first(where: { $0.state.inode == inode }) else {
            // A packet socket that no dumped descriptor holds, AF_XDP's umem and rings, TCP zero-copy receive.
            let closed = try m.inode.flatMap { try SockDiag.packetSocket(inode: UInt32(truncatingIfNeeded: $0), object: object) } != nil
            throw CryoError("\(object) is the mapped ring of a socket "
                + (closed ? "(an AF_PACKET PACKET_RX_RING/TX_RING) whose descriptor the tree has closed, not supported yet"
                          : "(an AF_PACKET PACKET_RX_RING/TX_RING, AF_XDP, or TCP zero-copy receive), not supported yet"))
        }
        let rings = found.state.ringBytes
        guard m.fileOffset == 0, m.end - m.start == UInt64(rings) else {
            throw CryoError("\(object) is part of the rings of AF_PACKET socket:[\(inode)] (\(rings) bytes from offset 0): "
                + "a ring mapping split, partly unmapped or moved is not supported yet")
        }
        if !m.shared {
            // A private mapping of the rings maps the socket's own pages as a shared one does, until the
            // task writes one: then the task has a copy of its own, which the socket's new rings cannot give back.
            let pageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))
            let words = try Pagemap.entries(pid: pid, start: m.start, count: Int((m.end - m.start) / pageSize))
            if let copied = words.firstIndex(where: { $0 & (1 << 63) != 0 && $0 & (1 << 61) == 0 }) {
                throw CryoError("\(object) maps the rings of AF_PACKET socket:[\(inode)] privately (MAP_PRIVATE), and the task wrote to "
                    + "0x\(String(m.start + UInt64(copied) * pageSize, radix: 16)): a private copy of a ring page is not supported")
            }
        }
        return found.file.id
    }
}
