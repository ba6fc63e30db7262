// The way-home frame (Sources/CryoInjector/SignalFrame.swift) must say what
// the kernel would write into a signal frame of that thread, or rt_sigreturn
// restores the legacy FP/SSE part only and zeroes the upper vector halves.
// These tests need no root: layouts of CPUs this machine is not (AMX, AVX
// only, no XSAVE) are given by hand, and the host's own layout is checked
// against a signal frame the kernel writes for this test process.

@testable import CryoInjector
import CryoSystem
import Foundation
import Glibc
import Testing

/// Standard-format offsets and sizes as CPUID leaf 0xD reports them.
private let avx = (2, XSaveLayout.Component(offset: 576, size: 256))
private let avx512 = [(5, XSaveLayout.Component(offset: 1088, size: 64)), (6, .init(offset: 1152, size: 512)),
                      (7, .init(offset: 1664, size: 1024))]
private let pkru = (9, XSaveLayout.Component(offset: 2688, size: 8))
private let tiles = [(17, XSaveLayout.Component(offset: 2752, size: 64)), (18, .init(offset: 2816, size: 8192))]

private func layout(_ components: [(Int, XSaveLayout.Component)]) -> XSaveLayout {
    XSaveLayout(enabled: components.reduce(UInt64(3)) { $0 | 1 << UInt64($1.0) },
                components: Dictionary(uniqueKeysWithValues: components))
}
private let avxOnly = layout([avx])
private let avx512Host = layout([avx] + avx512 + [pkru])
private let amxHost = layout([avx] + avx512 + [pkru] + tiles)
private let tileData: UInt64 = 1 << 18

@Suite("way-home signal frame layout")
struct SignalFrameTests {
    @Test("the CPU's vector state, for readers of the log")
    func logCPU() throws {
        let flags = HostCPU.flags
        let layout = XSaveLayout.host
        print("CPU: avx512f \(flags.contains("avx512f")), avx512bw \(flags.contains("avx512bw")), amx_tile \(flags.contains("amx_tile")), "
              + "XCR0 0x\(String(layout?.enabled ?? 0, radix: 16)), XSAVE area \(layout.map { $0.size(of: $0.enabled) } ?? 512) bytes")
        // The flags and CPUID must agree, or the skips keyed on either would mislead.
        #expect(flags.contains("avx512f") == ((layout?.enabled ?? 0) & 0xe0 == 0xe0))
    }

    @Test("AVX only: the whole area, one magic word")
    func avxOnlyLayout() {
        let state = SignalFrameXState(layout: avxOnly, xstateBV: 0x7)
        #expect(state == SignalFrameXState(features: 0x7, size: 832, magicOffsets: [832]))
    }

    @Test("AVX-512 with PKRU: every component, the size ends with PKRU")
    func avx512Layout() {
        let state = SignalFrameXState(layout: avx512Host, xstateBV: 0xe7)
        #expect(state == SignalFrameXState(features: 0x2e7, size: 2696, magicOffsets: [2696]))
    }

    @Test("AMX, thread without tile data: tiles left out, the magic also where a grown thread's frame ends")
    func amxWithoutTiles() {
        // The regset is 11008 bytes on such a CPU; the thread's own frames are 2816.
        #expect(amxHost.size(of: amxHost.enabled) == 11008)
        let state = SignalFrameXState(layout: amxHost, xstateBV: 0x2e7 | 1 << 17)
        #expect(state == SignalFrameXState(features: 0x202e7, size: 2816, magicOffsets: [2816, 11008]))
    }

    @Test("AMX, thread holding tile data: the full size, tile data declared")
    func amxWithTiles() {
        let state = SignalFrameXState(layout: amxHost, xstateBV: 0x2e7 | 1 << 17 | tileData)
        #expect(state == SignalFrameXState(features: 0x602e7, size: 11008, magicOffsets: [11008]))
    }

    @Test("a component placed below a lower-numbered one does not shrink the size")
    func offsetsNeedNotGrow() {
        // APX (component 19) reuses the old MPX slot at 960.
        var apx = amxHost
        apx.enabled |= 1 << 19
        apx.components[19] = .init(offset: 960, size: 128)
        let state = SignalFrameXState(layout: apx, xstateBV: 0x7)
        #expect(state.size == 2816 && state.features == 0xa02e7)
    }

    @Test("the frame: registers, mask, restart, sw_reserved, magic words, header masked")
    func frameBytes() throws {
        var regs = Registers()
        regs.rsp = 0x7fff_0000_1008
        regs.rip = 0x5555_0000_2002
        regs.rax = UInt64(bitPattern: -512) // ERESTARTSYS
        regs.orig_rax = 7
        regs.r8 = 0x0808; regs.r15 = 0x1515; regs.eflags = 0x246; regs.cs = 0x33; regs.ss = 0x2b
        var xsave = [UInt8](repeating: 0xa5, count: 11008)
        store(UInt64(0x2e7 | 1 << 40), into: &xsave, at: 512) // a bit XCR0 lacks must not reach XRSTOR
        let frame = try ReturnFrame(registers: regs, signalMask: 0x1234, xsave: xsave, layout: amxHost, pretcode: 0xdead_beef)
        let b = frame.bytes
        #expect(frame.address % 16 == 0)
        #expect(frame.address + UInt64(b.count) <= regs.rsp - 128, "the frame must stay below the red zone")
        #expect(load(UInt64.self, b, 0) == 0xdead_beef)
        #expect(load(UInt64.self, b, 48) == 0x0808, "r8")
        #expect(load(UInt64.self, b, 48 + 56) == 0x1515, "r15")
        #expect(load(UInt64.self, b, 48 + 104) == 7, "rax: the interrupted syscall's number again")
        #expect(load(UInt64.self, b, 48 + 128) == 0x5555_0000_2000, "rip: back on the syscall instruction")
        #expect(load(UInt64.self, b, 48 + 136) == 0x246)
        #expect(load(UInt16.self, b, 48 + 144) == 0x33 && load(UInt16.self, b, 48 + 150) == 0x2b)
        #expect(load(UInt64.self, b, 304) == 0x1234, "signal mask")
        let fp = load(UInt64.self, b, 48 + 184)
        #expect(fp % 64 == 0 && fp >= frame.address + 440)
        let area = Int(fp - frame.address)
        #expect(load(UInt32.self, b, area + 464) == 0x4650_5853, "magic1")
        #expect(load(UInt32.self, b, area + 468) == 2820, "extended_size")
        #expect(load(UInt64.self, b, area + 472) == 0x202e7, "xfeatures")
        #expect(load(UInt32.self, b, area + 480) == 2816, "xstate_size")
        #expect(load(UInt32.self, b, area + 2816) == 0x4650_5845 && load(UInt32.self, b, area + 11008) == 0x4650_5845)
        #expect(load(UInt64.self, b, area + 512) == 0x2e7, "XSTATE_BV within the declared features")
        #expect(b[area + 600] == 0xa5, "the AVX state copied")
        #expect(b[area + 3000] == 0, "tile data not copied")
        #expect(area + 11012 <= b.count)
    }

    @Test("no XSAVE: the FXSAVE area alone, no claim of extended state")
    func legacyFrame() throws {
        var regs = Registers()
        regs.rsp = 0x7fff_0000_0000
        var xsave = [UInt8](repeating: 0x5a, count: 512)
        store(UInt32(0x4650_5853), into: &xsave, at: 464)
        let frame = try ReturnFrame(registers: regs, signalMask: 0, xsave: xsave, layout: nil, pretcode: 1)
        let area = Int(load(UInt64.self, frame.bytes, 48 + 184) - frame.address)
        #expect(frame.bytes.count == area + 512)
        #expect(load(UInt32.self, frame.bytes, area + 464) == 0)
        #expect(frame.bytes[area + 100] == 0x5a)
    }

    @Test("a regset shorter than the thread's size is refused")
    func shortRegset() {
        #expect(throws: ReturnFrame.Failure.shortXSave(1000, needed: 2816)) {
            try ReturnFrame(registers: Registers(), signalMask: 0, xsave: [UInt8](repeating: 0, count: 1000),
                            layout: amxHost, pretcode: 0)
        }
    }

    @Test("this machine: the same features, size and magic as the kernel's own signal frame",
          .enabled(if: XSaveLayout.host != nil, "the CPU or kernel has no XSAVE"))
    func matchesKernelFrame() throws {
        let kernel = try #require(KernelSignalFrame.capture())
        print("kernel signal frame here: xfeatures 0x\(String(kernel.features, radix: 16)), xstate_size \(kernel.size)")
        let ours = SignalFrameXState(layout: try #require(XSaveLayout.host), xstateBV: kernel.xstateBV)
        #expect(ours.features == kernel.features)
        #expect(ours.size == kernel.size)
        #expect(ours.magicOffsets.first == kernel.size && kernel.magic2 == 0x4650_5845)
    }
}

/// The host's CPU flags as /proc/cpuinfo lists them.
enum HostCPU {
    static let flags: Set<String> = {
        let text = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
              let colon = line.firstIndex(of: ":") else { return [] }
        return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
    }()
}

private func load<T: FixedWidthInteger>(_: T.Type, _ bytes: [UInt8], _ offset: Int) -> T {
    T(littleEndian: bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) })
}
private func store<T: FixedWidthInteger>(_ value: T, into bytes: inout [UInt8], at offset: Int) {
    bytes.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
}

/// What the kernel writes into a signal frame of this thread: a handler for a
/// real-time signal copies the XSAVE area's sw_reserved words, XSTATE_BV and
/// the word at xstate_size into a buffer set aside before (no allocation in
/// the handler).
private enum KernelSignalFrame {
    struct Seen { var features: UInt64; var size: Int; var xstateBV: UInt64; var magic2: UInt32 }
    nonisolated(unsafe) static let buffer = UnsafeMutableRawPointer.allocate(byteCount: 32, alignment: 8)

    static func capture() -> Seen? {
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: 32)
        let signal = __libc_current_sigrtmin() + 7
        var action = sigaction()
        action.sa_flags = SA_SIGINFO
        action.__sigaction_handler.sa_sigaction = { _, _, context in
            guard let context else { return }
            let uc = context.assumingMemoryBound(to: ucontext_t.self)
            guard let fp = uc.pointee.uc_mcontext.fpregs else { return }
            let area = UnsafeRawPointer(fp)
            let size = area.loadUnaligned(fromByteOffset: 480, as: UInt32.self)
            KernelSignalFrame.buffer.storeBytes(of: area.loadUnaligned(fromByteOffset: 472, as: UInt64.self), toByteOffset: 0, as: UInt64.self)
            KernelSignalFrame.buffer.storeBytes(of: UInt64(size), toByteOffset: 8, as: UInt64.self)
            KernelSignalFrame.buffer.storeBytes(of: area.loadUnaligned(fromByteOffset: 512, as: UInt64.self), toByteOffset: 16, as: UInt64.self)
            if area.loadUnaligned(fromByteOffset: 464, as: UInt32.self) == 0x4650_5853 {
                KernelSignalFrame.buffer.storeBytes(of: area.loadUnaligned(fromByteOffset: Int(size), as: UInt32.self), toByteOffset: 24, as: UInt32.self)
            }
        }
        var old = sigaction()
        guard sigaction(signal, &action, &old) == 0 else { return nil }
        defer { sigaction(signal, &old, nil) }
        // Delivered to this thread even where the test runner blocks signals in its threads.
        var only = sigset_t(), previous = sigset_t()
        sigemptyset(&only)
        sigaddset(&only, signal)
        pthread_sigmask(SIG_UNBLOCK, &only, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        guard raise(signal) == 0 else { return nil }
        return Seen(features: buffer.load(fromByteOffset: 0, as: UInt64.self), size: Int(buffer.load(fromByteOffset: 8, as: UInt64.self)),
                    xstateBV: buffer.load(fromByteOffset: 16, as: UInt64.self), magic2: buffer.load(fromByteOffset: 24, as: UInt32.self))
    }
}
