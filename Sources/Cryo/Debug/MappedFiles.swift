import CCryo
import CElf
import CUnwind
import CryoSystem
import FoundationEssentials
import Glibc

/// One mapping of an address space being unwound, as the image or
/// /proc/PID/maps describes it.
struct MappedRegion {
    var start: UInt64
    var end: UInt64
    var fileOffset: UInt64
    /// A mapped file's path; nil for anonymous memory and kernel areas.
    var path: String?
    /// What to print for an address in it: the path, or "[vdso]", "[stack]"...
    var label: String?
    var device: UInt64?
    var inode: UInt64?
    var executable: Bool
}

/// The ELF files behind the file mappings of one address space, opened on
/// demand with libelf and used only when they are the very files that were
/// mapped (same device and inode). They give libunwind the `.eh_frame_hdr`
/// search table of the object holding an address, and names from the
/// symbol tables.
final class MappedFiles {
    let regions: [MappedRegion]
    private var opened: [String: Result<ElfFile, ElfFile.Problem>] = [:]

    init(regions: [MappedRegion]) {
        self.regions = regions.sorted { $0.start < $1.start }
    }

    func region(containing address: UInt64) -> MappedRegion? {
        var low = 0, high = regions.count
        while low < high {
            let middle = (low + high) / 2
            if regions[middle].end <= address { low = middle + 1 } else { high = middle }
        }
        return low < regions.count && regions[low].start <= address ? regions[low] : nil
    }

    /// The ELF file mapped by `region`, or why it cannot be used.
    func file(for region: MappedRegion) -> Result<ElfFile, ElfFile.Problem>? {
        guard let path = region.path else { return nil }
        let key = "\(path)\u{0}\(region.device ?? 0):\(region.inode ?? 0)"
        if let known = opened[key] { return known }
        let result = Result { () throws(ElfFile.Problem) in try ElfFile(path: path, device: region.device, inode: region.inode) }
        opened[key] = result
        return result
    }

    /// What to say next to a frame in `region` when its file is not usable.
    func problem(for region: MappedRegion) -> String? {
        if case .failure(let problem) = file(for: region) { return problem.description }
        return nil
    }

    /// The object mapped at `address` and its load bias (runtime address
    /// minus ELF virtual address), from the mapping that holds `address`.
    func locate(_ address: UInt64) -> (file: ElfFile, bias: UInt64)? {
        guard let region = region(containing: address), case .success(let file)? = file(for: region),
              let bias = file.bias(mappedAt: region.start, fileOffset: region.fileOffset, executable: region.executable)
        else { return nil }
        return (file, bias)
    }

    /// libunwind's description of the `.eh_frame_hdr` search table that
    /// covers `ip`, in runtime addresses (read back through access_mem).
    func unwindTable(for ip: UInt64) -> unw_dyn_info_t? {
        guard let located = locate(ip), let header = located.file.frameHeader, let table = located.file.searchTable else {
            return nil
        }
        let (file, bias) = located
        let elfAddress = ip &- bias
        guard let segment = file.loads.first(where: { $0.p_vaddr <= elfAddress && elfAddress - $0.p_vaddr < $0.p_memsz }) else {
            return nil
        }
        var info = unw_dyn_info_t()
        info.format = Int32(UNW_INFO_FORMAT_REMOTE_TABLE.rawValue)
        info.start_ip = bias &+ segment.p_vaddr
        info.end_ip = info.start_ip &+ segment.p_memsz
        info.u.rti.segbase = bias &+ header.vaddr
        info.u.rti.table_data = info.u.rti.segbase &+ table.offset
        // Each entry is two 32-bit words: the function's start and its FDE, both relative to segbase.
        info.u.rti.table_len = table.count * 8 / UInt64(MemoryLayout<unw_word_t>.size)
        return info
    }

    /// The function that holds `address`: from .symtab, else the separate
    /// debug file's, else .dynsym.
    func symbol(at address: UInt64) -> (name: String, offset: UInt64)? {
        guard let located = locate(address) else { return nil }
        return located.file.symbol(containing: address &- located.bias)
    }
}

/// An ELF file opened read-only with libelf: its PT_LOAD segments, where its
/// `.eh_frame_hdr` is, and its function symbols.
final class ElfFile {
    enum Problem: Error, CustomStringConvertible {
        case replaced(path: String)
        case unreadable(path: String, reason: String)

        var description: String {
            switch self {
            // Printed next to the path: the path itself is left out.
            case .replaced: "not the file that was mapped (device or inode differ); not used"
            case .unreadable(_, let reason): "cannot read it: \(reason)"
            }
        }
    }

    struct Symbol {
        var value: UInt64
        var size: UInt64
        var name: String
        /// Lower is preferred among symbols at one address: fewer leading underscores, then global, weak, local.
        var rank: Int
    }

    let path: String
    private let fd: Int32
    private let elf: OpaquePointer
    private(set) var loads: [GElf_Phdr] = []
    /// Virtual address, file offset and size of `.eh_frame_hdr`.
    private(set) var frameHeader: (vaddr: UInt64, offset: UInt64, size: UInt64)?
    private var symbolsLoaded = false
    private var symbols: [Symbol] = []

    init(path: String, device: UInt64?, inode: UInt64?) throws(Problem) {
        self.path = path
        guard elf_version(UInt32(EV_CURRENT)) != UInt32(EV_NONE) else { throw .unreadable(path: path, reason: "libelf version mismatch") }
        let fd: Int32
        let st: Glibc.stat
        do {
            let file = try Files.open(path, .readOnly)
            fd = file.rawValue
            do { st = try Files.stat(file, object: path) } catch { try? file.close(); throw error }
        } catch {
            throw .unreadable(path: path, reason: (error as? SyscallError)?.errno.description ?? "\(error)")
        }
        if let device, let inode, UInt64(st.st_dev) != device || UInt64(st.st_ino) != inode {
            Glibc.close(fd)
            throw .replaced(path: path)
        }
        guard let elf = elf_begin(fd, ELF_C_READ_MMAP, nil), elf_kind(elf) == ELF_K_ELF else {
            Glibc.close(fd)
            throw .unreadable(path: path, reason: "not an ELF file")
        }
        self.fd = fd
        self.elf = elf
        var count = 0
        if elf_getphdrnum(elf, &count) == 0 {
            for i in 0..<Int32(count) {
                var header = GElf_Phdr()
                guard gelf_getphdr(elf, i, &header) != nil else { continue }
                if header.p_type == UInt32(PT_LOAD) { loads.append(header) }
                if header.p_type == UInt32(PT_GNU_EH_FRAME) { frameHeader = (header.p_vaddr, header.p_offset, header.p_filesz) }
            }
        }
        if frameHeader == nil, let section = section(named: ".eh_frame_hdr") {
            frameHeader = (section.sh_addr, section.sh_offset, section.sh_size)
        }
    }

    deinit {
        elf_end(elf)
        Glibc.close(fd)
    }

    private func section(named wanted: String) -> GElf_Shdr? {
        var names = 0
        guard elf_getshdrstrndx(elf, &names) == 0 else { return nil }
        var section = elf_nextscn(elf, nil)
        while let scn = section {
            var header = GElf_Shdr()
            if gelf_getshdr(scn, &header) != nil, let name = elf_strptr(elf, names, Int(header.sh_name)),
               String(cString: name) == wanted {
                return header
            }
            section = elf_nextscn(elf, scn)
        }
        return nil
    }

    /// Runtime address minus ELF address for a mapping of this file at
    /// `start` from `fileOffset`: found from the PT_LOAD that covers that
    /// offset (the executable one when the mapping is executable).
    func bias(mappedAt start: UInt64, fileOffset: UInt64, executable: Bool) -> UInt64? {
        let covering = loads.filter { load in
            let first = load.p_offset & ~0xfff
            return first <= fileOffset && fileOffset < max(load.p_offset + load.p_filesz, first + 1)
        }
        guard let load = covering.first(where: { ($0.p_flags & UInt32(PF_X) != 0) == executable }) ?? covering.first else {
            return nil
        }
        // Inside a segment, file offsets and virtual addresses move together.
        return start &- load.p_vaddr &- fileOffset &+ load.p_offset
    }

    /// Where the binary search table starts inside `.eh_frame_hdr` and how
    /// many entries it has, when libunwind can search it: version 1 with a
    /// table of data-relative signed 32-bit pairs.
    private(set) lazy var searchTable: (offset: UInt64, count: UInt64)? = {
        guard let header = frameHeader, header.size >= 4 else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(min(header.size, 4 + 8 + 8)))
        guard pread(fd, &bytes, bytes.count, off_t(header.offset)) == bytes.count else { return nil }
        let (version, framePointerEncoding, countEncoding, tableEncoding) = (bytes[0], bytes[1], bytes[2], bytes[3])
        let dataRelativeSigned32: UInt8 = 0x3b  // DW_EH_PE_datarel | DW_EH_PE_sdata4
        guard version == 1, tableEncoding == dataRelativeSigned32 else { return nil }
        var reader = EncodedReader(bytes: bytes, position: 4)
        guard reader.skip(framePointerEncoding), countEncoding & 0x70 == 0, let count = reader.read(countEncoding), count > 0
        else { return nil }
        return (UInt64(reader.position), count)
    }()

    /// The function symbol whose range holds `address` (an ELF virtual address).
    func symbol(containing address: UInt64) -> (name: String, offset: UInt64)? {
        if !symbolsLoaded {
            symbolsLoaded = true
            symbols = readSymbols(type: UInt32(SHT_SYMTAB))
            // Stripped (as Debian ships libraries): the full table may be in the
            // separate debug file of the same build (e.g. libc6-dbg), else only exported names.
            if symbols.isEmpty, let debug = separateDebugFile() { symbols = debug.readSymbols(type: UInt32(SHT_SYMTAB)) }
            if symbols.isEmpty { symbols = readSymbols(type: UInt32(SHT_DYNSYM)) }
            // By address; at one address the preferred name comes last, so a backward walk meets it first.
            symbols.sort { $0.value != $1.value ? $0.value < $1.value : $0.rank > $1.rank }
        }
        var low = 0, high = symbols.count
        while low < high {
            let middle = (low + high) / 2
            if symbols[middle].value <= address { low = middle + 1 } else { high = middle }
        }
        // Walk back over the symbols that start at or before `address`; a
        // few steps suffice since functions rarely nest.
        var i = low - 1
        var steps = 0
        while i >= 0 && steps < 64 {
            let symbol = symbols[i]
            // An assembly label without a size (glibc's __restore_rt) names only its own address.
            if address - symbol.value < max(symbol.size, 1) { return (symbol.name, address - symbol.value) }
            i -= 1
            steps += 1
        }
        return nil
    }

    /// /usr/lib/debug/.build-id/xx/yyyy.debug for this file's GNU build id, when installed.
    private func separateDebugFile() -> ElfFile? {
        guard let id = buildID(), id.count >= 2 else { return nil }
        let digits = id.map { String(printf: "%02x", $0) }
        let path = "/usr/lib/debug/.build-id/\(digits[0])/\(digits.dropFirst().joined()).debug"
        guard let debug = try? ElfFile(path: path, device: nil, inode: nil), debug.buildID() == id else { return nil }
        return debug
    }

    /// The NT_GNU_BUILD_ID note's bytes.
    func buildID() -> [UInt8]? {
        var section = elf_nextscn(elf, nil)
        while let scn = section {
            defer { section = elf_nextscn(elf, scn) }
            var header = GElf_Shdr()
            guard gelf_getshdr(scn, &header) != nil, header.sh_type == UInt32(SHT_NOTE), let data = elf_getdata(scn, nil) else { continue }
            var offset = 0
            while true {
                var note = GElf_Nhdr()
                var nameOffset = 0, descriptorOffset = 0
                let next = gelf_getnote(data, offset, &note, &nameOffset, &descriptorOffset)
                guard next > 0, let base = data.pointee.d_buf else { break }
                let name = base.advanced(by: nameOffset).assumingMemoryBound(to: UInt8.self)
                if note.n_type == UInt32(NT_GNU_BUILD_ID), note.n_namesz == 4,
                   Array(UnsafeBufferPointer(start: name, count: 4)) == Array("GNU\0".utf8) {
                    let bytes = UnsafeRawBufferPointer(start: base.advanced(by: descriptorOffset), count: Int(note.n_descsz))
                    return Array(bytes)
                }
                offset = next
            }
        }
        return nil
    }

    private func readSymbols(type: UInt32) -> [Symbol] {
        var result: [Symbol] = []
        var section = elf_nextscn(elf, nil)
        while let scn = section {
            defer { section = elf_nextscn(elf, scn) }
            var header = GElf_Shdr()
            guard gelf_getshdr(scn, &header) != nil, header.sh_type == type, header.sh_entsize > 0,
                  let data = elf_getdata(scn, nil) else { continue }
            for i in 0..<Int32(header.sh_size / header.sh_entsize) {
                var symbol = GElf_Sym()
                guard gelf_getsym(data, i, &symbol) != nil else { continue }
                let kind = symbol.st_info & 0xf, binding = symbol.st_info >> 4
                guard kind == UInt8(STT_FUNC) || kind == UInt8(STT_GNU_IFUNC), symbol.st_shndx != UInt16(SHN_UNDEF),
                      symbol.st_value != 0, let name = elf_strptr(elf, Int(header.sh_link), Int(symbol.st_name)) else { continue }
                // A full symbol table spells symbol versions into names (memcpy@@GLIBC_2.14): drop them.
                let text = String(String(cString: name).prefix { $0 != "@" })
                guard !text.isEmpty else { continue }
                let bindingRank = binding == UInt8(STB_GLOBAL) ? 0 : binding == UInt8(STB_WEAK) ? 1 : 2
                // glibc's public names are weak aliases of global __names: the public one reads better.
                result.append(Symbol(value: symbol.st_value, size: symbol.st_size, name: text,
                                     rank: min(text.prefix { $0 == "_" }.count, 15) * 4 + bindingRank))
            }
        }
        return result
    }
}

/// Reads DWARF pointer-encoded values (DW_EH_PE_*) of `.eh_frame_hdr`'s
/// header: only their size matters for the frame pointer, and the count
/// must be an absolute value.
private struct EncodedReader {
    let bytes: [UInt8]
    var position: Int

    mutating func skip(_ encoding: UInt8) -> Bool { encoding == 0xff || read(encoding) != nil }

    mutating func read(_ encoding: UInt8) -> UInt64? {
        guard encoding != 0xff else { return nil }  // DW_EH_PE_omit
        switch encoding & 0x0f {
        case 0x00, 0x04, 0x0c: return fixed(8)  // absptr, udata8, sdata8
        case 0x03: return fixed(4)
        case 0x0b: return fixed(4).map { UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: $0))) }
        case 0x02: return fixed(2)
        case 0x0a: return fixed(2).map { UInt64(bitPattern: Int64(Int16(truncatingIfNeeded: $0))) }
        case 0x01, 0x09: return leb128(signed: encoding & 0x0f == 0x09)
        default: return nil
        }
    }

    private mutating func fixed(_ size: Int) -> UInt64? {
        guard position + size <= bytes.count else { return nil }
        var value: UInt64 = 0
        for i in (0..<size).reversed() { value = value << 8 | UInt64(bytes[position + i]) }
        position += size
        return value
    }

    private mutating func leb128(signed: Bool) -> UInt64? {
        var value: UInt64 = 0, shift: UInt64 = 0
        while position < bytes.count, shift < 64 {
            let byte = bytes[position]
            position += 1
            value |= UInt64(byte & 0x7f) << shift
            shift += 7
            if byte & 0x80 == 0 {
                if signed, shift < 64, byte & 0x40 != 0 { value |= ~0 << shift }
                return value
            }
        }
        return nil
    }
}
