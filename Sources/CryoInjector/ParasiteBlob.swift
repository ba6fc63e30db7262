import CCryo
import CElf
import FoundationEssentials

/// A blob to inject: the loadable bytes of a self-contained static-pie ELF
/// (one `.blob` section) and the offsets of its entry points (the symbols of
/// injector_protocol.h), read with libelf.
public struct ParasiteBlob: Sendable {
    public let bytes: [UInt8]
    public let entryOffset: UInt64
    public let gadgetOffset: UInt64
    /// Where the blob stops on the stop signal after a command, if it can (optional:
    /// without it commands end on int3).
    public let stoppedOffset: UInt64?
    /// Offsets of 64-bit words that must have the load address added.
    public let relativeRelocations: [(offset: UInt64, addend: UInt64)]
    /// Function symbols by offset, to name the frames of a crashed parasite.
    public let functions: [(offset: UInt64, name: String)]

    public enum LoadError: Error, CustomStringConvertible {
        case invalid(String)
        public var description: String {
            switch self { case .invalid(let why): "parasite blob: \(why)" }
        }
    }

    public init(elf image: [UInt8]) throws {
        guard elf_version(UInt32(EV_CURRENT)) != UInt32(EV_NONE) else { throw LoadError.invalid("libelf: version mismatch") }
        var copy = image
        let parsed: (bytes: [UInt8], symbols: [String: UInt64], relocations: [(UInt64, UInt64)])? = copy.withUnsafeMutableBytes { raw in
            guard let elf = elf_memory(raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count) else { return nil }
            defer { elf_end(elf) }
            var shstrndx = 0
            guard elf_kind(elf) == ELF_K_ELF, elf_getshdrstrndx(elf, &shstrndx) == 0 else { return nil }
            var blob: [UInt8]?
            var symbols: [String: UInt64] = [:]
            var relocations: [(UInt64, UInt64)] = []
            var section = elf_nextscn(elf, nil)
            while let scn = section {
                var header = GElf_Shdr()
                guard gelf_getshdr(scn, &header) != nil else { return nil }
                let name = elf_strptr(elf, shstrndx, Int(header.sh_name)).map { String(cString: $0) } ?? ""
                let data = elf_getdata(scn, nil)
                if name == ".blob", let data, let buffer = data.pointee.d_buf {
                    blob = [UInt8](UnsafeRawBufferPointer(start: buffer, count: Int(data.pointee.d_size)))
                } else if header.sh_type == UInt32(SHT_SYMTAB), let data {
                    let count = Int(header.sh_size / max(header.sh_entsize, 1))
                    for i in 0..<count {
                        var symbol = GElf_Sym()
                        guard gelf_getsym(data, Int32(i), &symbol) != nil,
                              let symbolName = elf_strptr(elf, Int(header.sh_link), Int(symbol.st_name)) else { continue }
                        symbols[String(cString: symbolName)] = symbol.st_value
                    }
                } else if header.sh_type == UInt32(SHT_RELA), let data {
                    let count = Int(header.sh_size / max(header.sh_entsize, 1))
                    for i in 0..<count {
                        var rela = GElf_Rela()
                        guard gelf_getrela(data, Int32(i), &rela) != nil else { return nil }
                        // Only R_X86_64_RELATIVE can occur in a self-contained static-pie.
                        guard rela.r_info & 0xffff_ffff == 8 else { return nil }
                        relocations.append((rela.r_offset, UInt64(bitPattern: rela.r_addend)))
                    }
                }
                section = elf_nextscn(elf, scn)
            }
            guard let blob else { return nil }
            return (blob, symbols, relocations)
        }
        guard let parsed else { throw LoadError.invalid("not a parasite ELF (no .blob section, or unexpected relocations)") }
        guard let entry = parsed.symbols[CRYO_PARASITE_ENTRY_SYMBOL],
              let gadget = parsed.symbols[CRYO_PARASITE_GADGET_SYMBOL] else {
            throw LoadError.invalid("entry symbols missing")
        }
        for (offset, _) in parsed.relocations where offset + 8 > UInt64(parsed.bytes.count) {
            throw LoadError.invalid("relocation at 0x\(String(offset, radix: 16)) outside the blob")
        }
        bytes = parsed.bytes
        functions = parsed.symbols.filter { !$0.key.isEmpty && !$0.key.hasPrefix("_") && !$0.key.contains(".") } // no file symbols
            .map { ($0.value, $0.key) }.sorted { $0.0 < $1.0 }
        entryOffset = entry
        gadgetOffset = gadget
        stoppedOffset = parsed.symbols[CRYO_PARASITE_STOPPED_SYMBOL]
        relativeRelocations = parsed.relocations
    }

    /// "function+0x12" for an offset inside the blob.
    public func symbolize(_ offset: UInt64) -> String {
        guard let f = functions.last(where: { $0.offset <= offset }) else { return "0x\(String(offset, radix: 16))" }
        return "\(f.name)+0x\(String(offset - f.offset, radix: 16))"
    }

    /// The bytes as they must appear when loaded at `base`.
    public func relocated(at base: UInt64) -> [UInt8] {
        var image = bytes
        for (offset, addend) in relativeRelocations {
            withUnsafeBytes(of: (base &+ addend).littleEndian) { word in
                image.replaceSubrange(Int(offset)..<Int(offset) + 8, with: word)
            }
        }
        return image
    }
}

