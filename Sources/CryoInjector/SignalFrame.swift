import CCryo
import CryoSystem

/// Where the XSAVE standard (non-compacted) format puts each state component
/// on a CPU, and which components the kernel enabled (XCR0). Taken from the
/// host's CPUID, or given by hand (tests lay out CPUs this machine is not).
public struct XSaveLayout: Sendable, Equatable {
    public struct Component: Sendable, Equatable {
        public var offset: Int
        public var size: Int
        public init(offset: Int, size: Int) { self.offset = offset; self.size = size }
    }
    /// XCR0: the user state components in use on this machine.
    public var enabled: UInt64
    /// Components 2 and up (CPUID leaf 0xD, sub-leaf i: EBX offset, EAX size).
    public var components: [Int: Component]

    public init(enabled: UInt64, components: [Int: Component]) {
        self.enabled = enabled
        self.components = components
    }

    /// The FXSAVE area and the XSAVE header before the first extended component.
    public static let legacySize = 512
    public static let headerSize = 64
    /// Components the kernel gives a thread room for only once its process
    /// asked for them (`ARCH_REQ_XCOMP_PERM`) and the thread first used them:
    /// AMX tile data (component 18). Until then the thread's signal frames,
    /// and what rt_sigreturn accepts, are sized without them.
    public static let dynamicComponents: UInt64 = 1 << 18

    /// This machine's layout; nil without XSAVE enabled by the OS.
    public static let host: XSaveLayout? = {
        let xcr0 = cryo_xcr0()
        guard xcr0 != 0 else { return nil }
        var components: [Int: Component] = [:]
        var regs = [UInt32](repeating: 0, count: 4)
        for index in 2..<63 where xcr0 & (1 << UInt64(index)) != 0 {
            cryo_cpuid(0xd, UInt32(index), &regs)
            components[index] = Component(offset: Int(regs[1]), size: Int(regs[0]))
        }
        return XSaveLayout(enabled: xcr0, components: components)
    }()

    /// Bytes of a standard-format area that holds `features`: up to the end of
    /// the component that ends last (offsets need not grow with the index),
    /// and at least the legacy area and the header.
    public func size(of features: UInt64) -> Int {
        var end = Self.legacySize + Self.headerSize
        for (index, component) in components where features & (1 << UInt64(index)) != 0 {
            end = max(end, component.offset + component.size)
        }
        return end
    }
}

/// What the XSAVE part of a signal frame says about itself, as the kernel
/// would write it for one thread: the features and size in its `sw_reserved`
/// words, and where the second magic word goes.
///
/// rt_sigreturn restores the extended state only when that magic sits where it
/// expects it: older kernels at the frame's declared size (which must not
/// exceed the thread's own signal-frame size), newer ones at the thread's own
/// size whatever the frame declares. Otherwise it restores the legacy part
/// only and the upper halves of the vector registers come back zero. A
/// thread's own size leaves out AMX tile data unless the thread holds it.
public struct SignalFrameXState: Sendable, Equatable {
    /// The `xfeatures` word: the components rt_sigreturn is to take from the frame.
    public var features: UInt64
    /// The `xstate_size` word: bytes of the XSAVE area proper.
    public var size: Int
    /// Offsets of the second magic word (from the start of the area).
    public var magicOffsets: [Int]

    public init(features: UInt64, size: Int, magicOffsets: [Int]) {
        self.features = features
        self.size = size
        self.magicOffsets = magicOffsets
    }

    /// `xstateBV` is the XSAVE header's first word in the thread's regset:
    /// the components whose state is not in its initial configuration.
    public init(layout: XSaveLayout, xstateBV: UInt64) {
        let dynamic = layout.enabled & XSaveLayout.dynamicComponents
        // A thread whose tile data is live has been given room for it.
        let held = xstateBV & dynamic
        features = (layout.enabled & ~dynamic) | held
        size = layout.size(of: features)
        magicOffsets = [size]
        // A thread that once used tiles and released them has the larger size
        // while holding none: newer kernels look for the magic there. Tile data
        // left out of `features` is set to its initial state, as it was.
        let largest = layout.size(of: layout.enabled)
        if largest > size { magicOffsets.append(largest) }
    }

    /// The bytes of the area, in the regset's standard format, covering the last magic word.
    public var extent: Int { (magicOffsets.max() ?? size) + 4 }
}

/// The kernel's x86-64 rt_sigreturn frame (arch/x86/include/uapi/asm/sigcontext.h,
/// ucontext.h; glibc's ucontext_t differs), written below a thread's stack so
/// that `rt_sigreturn` brings the thread back to `registers`, `signalMask` and
/// its XSAVE area: the way home of a task cryo changes while it may die.
public struct ReturnFrame: Sendable {
    /// Where the frame starts: its first word is `pretcode`, where a `ret` lands;
    /// rt_sigreturn then expects rsp at `address` + 8.
    public let address: UInt64
    public let bytes: [UInt8]

    public enum Failure: Error, Equatable, CustomStringConvertible {
        case shortXSave(Int, needed: Int)
        public var description: String {
            switch self {
            case .shortXSave(let count, let needed): "an XSAVE area of \(count) bytes, \(needed) needed"
            }
        }
    }

    static let frameSize = 440
    static let contextOffset = 48      // uc_mcontext in rt_sigframe
    static let sigmaskOffset = 304     // uc.uc_sigmask
    static let redZone: UInt64 = 128
    static let magic1: UInt32 = 0x4650_5853
    static let magic2: UInt32 = 0x4650_5845
    /// `sw_reserved` in the FXSAVE area.
    static let softwareReservedOffset = 464

    /// Lays out the frame below `registers.rsp`'s red zone. An interrupted
    /// syscall is turned into its restart (rt_sigreturn clears orig_rax, so the
    /// kernel would not restart it). `layout` nil: the CPU has no XSAVE, and the
    /// frame holds the 512-byte FXSAVE area alone.
    public init(registers: Registers, signalMask: UInt64, xsave: [UInt8], layout: XSaveLayout?, pretcode: UInt64) throws {
        guard xsave.count >= XSaveLayout.legacySize else {
            throw Failure.shortXSave(xsave.count, needed: XSaveLayout.legacySize)
        }
        var state: SignalFrameXState?
        if let layout, xsave.count >= XSaveLayout.legacySize + XSaveLayout.headerSize {
            let bv = xsave.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: XSaveLayout.legacySize, as: UInt64.self) }
            let found = SignalFrameXState(layout: layout, xstateBV: UInt64(littleEndian: bv))
            guard xsave.count >= found.size else { throw Failure.shortXSave(xsave.count, needed: found.size) }
            state = found
        }
        let areaSize = state?.extent ?? XSaveLayout.legacySize
        let top = registers.rsp &- Self.redZone
        let fp = (top &- UInt64(areaSize)) & ~63 // XRSTOR needs 64-byte alignment
        let frame = (fp &- UInt64(Self.frameSize)) & ~15
        var out = [UInt8](repeating: 0, count: Int(fp + UInt64(areaSize) - frame))

        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            out.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
        }
        put(pretcode, at: 0)
        let ucFlagsFPXState: UInt64 = 1, ucFlagsSigcontextSS: UInt64 = 2, ucFlagsStrictRestoreSS: UInt64 = 4
        put(ucFlagsFPXState | ucFlagsSigcontextSS | ucFlagsStrictRestoreSS, at: 8)
        // An invalid uc_stack mode makes rt_sigreturn's sigaltstack step fail,
        // which it ignores: the thread keeps its alternate stack as it is.
        put(Int32(4), at: 32)

        // rt_sigreturn clears orig_rax, so the kernel would not restart the interrupted syscall itself.
        let restarted = registers.restartingInterruptedSyscall
        let rax = restarted.rax, rip = restarted.rip
        let words: [UInt64] = [
            registers.r8, registers.r9, registers.r10, registers.r11, registers.r12, registers.r13, registers.r14, registers.r15,
            registers.rdi, registers.rsi, registers.rbp, registers.rbx, registers.rdx, rax, registers.rcx, registers.rsp,
            rip, registers.eflags,
        ]
        for (i, word) in words.enumerated() { put(word, at: Self.contextOffset + 8 * i) }
        put(UInt16(truncatingIfNeeded: registers.cs), at: Self.contextOffset + 144)
        put(UInt16(truncatingIfNeeded: registers.ss), at: Self.contextOffset + 150)
        put(fp, at: Self.contextOffset + 184)
        put(signalMask, at: Self.sigmaskOffset)

        let area = Int(fp - frame)
        let copied = state?.size ?? XSaveLayout.legacySize
        out.withUnsafeMutableBytes { o in
            xsave.withUnsafeBytes { x in
                o.baseAddress!.advanced(by: area).copyMemory(from: x.baseAddress!, byteCount: copied)
            }
        }
        if let state {
            // Only the components declared may be marked live in the header.
            let bvOffset = area + XSaveLayout.legacySize
            let bv = out.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: bvOffset, as: UInt64.self) }
            put(UInt64(littleEndian: bv) & state.features, at: bvOffset)
            let sw = area + Self.softwareReservedOffset
            put(Self.magic1, at: sw)
            put(UInt32(state.size + 4), at: sw + 4)  // extended_size
            put(state.features, at: sw + 8)
            put(UInt32(state.size), at: sw + 16)
            for offset in state.magicOffsets { put(Self.magic2, at: area + offset) }
        } else {
            // Without XSAVE the sw_reserved words must not claim extended state.
            for i in stride(from: 0, to: 48, by: 8) { put(UInt64(0), at: area + Self.softwareReservedOffset + i) }
        }
        address = frame
        bytes = out
    }
}
