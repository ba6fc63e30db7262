// CryoInjector as a library: a blob of this test's own (freestanding C, built
// here with clang), not cryo's parasite, is injected into a running fixture,
// answers a command from inside it, and is cured; the fixture then passes its
// own checks.

import CryoInjector
import CryoSystem
import Foundation
import Glibc
import Testing

extension EndToEnd {
    @Suite("injector library")
    struct InjectorTests {
        static let blobSource = #"""
            #include <stdint.h>
            #include "injector_protocol.h"

            /* Entry and syscall gadget, the two symbols the injector requires. */
            __asm__(".text\n"
                    ".globl cryo_parasite_entry\n"
                    "cryo_parasite_entry:\n"
                    "    call blob_main\n"
                    "    int3\n"
                    ".globl cryo_parasite_syscall_gadget\n"
                    "cryo_parasite_syscall_gadget:\n"
                    "    syscall\n"
                    "    int3\n");

            static long raw_getpid(void) {
                long r;
                __asm__ volatile("syscall" : "=a"(r) : "a"(39L) : "rcx", "r11", "memory");
                return r;
            }

            /* PING answers 77; command 2 adds the payload's two words and says whose pid it runs in. */
            __attribute__((used)) void blob_main(struct cryo_args_header *h) {
                uint64_t *words = (uint64_t *)(h + 1);
                if (h->magic != CRYO_PARASITE_MAGIC) { h->result = -22; return; }
                switch (h->command) {
                case CRYO_INJECTOR_CMD_PING: h->result = 77; break;
                case 2: words[0] = words[0] + words[1]; words[1] = (uint64_t)raw_getpid(); h->result = 0; break;
                default: h->result = -38; break;
                }
            }
            """#

        static let linkerScript = """
            ENTRY(cryo_parasite_entry)
            SECTIONS {
                . = 0;
                .blob : { *(.text*) *(.rodata*) *(.data*) *(.bss*) *(COMMON) }
                .rela.dyn : { *(.rela*) }
                .dynamic : { *(.dynamic) }
                .dynsym : { *(.dynsym) }
                .dynstr : { *(.dynstr) }
                .hash : { *(.hash) *(.gnu.hash) }
                /DISCARD/ : { *(.comment) *(.note*) *(.eh_frame*) *(.interp) }
            }
            """

        /// Compiles and links the blob as a self-contained static-pie ELF.
        static func buildBlob(in scratch: Scratch) throws -> [UInt8] {
            let clang = ["/opt/swift/usr/bin/clang", "/usr/bin/clang"].first { Locations.isExecutableFile($0) }
            let compiler = try #require(clang, "no clang to build the test blob")
            try blobSource.write(toFile: scratch.file("blob.c"), atomically: true, encoding: .utf8)
            try linkerScript.write(toFile: scratch.file("blob.ld"), atomically: true, encoding: .utf8)
            let arguments = ["-ffreestanding", "-nostdlib", "-fPIE", "-O2", "-fno-stack-protector", "-mno-red-zone",
                             "-fcf-protection=none", "-mgeneral-regs-only", "-I", Locations.packageRoot + "/Sources/CCryo/include",
                             "-fuse-ld=lld", "-static-pie", "-Wl,-T," + scratch.file("blob.ld"), "-Wl,--no-dynamic-linker",
                             "-o", scratch.file("blob.elf"), scratch.file("blob.c")]
            let log = scratch.file("blob.log")
            let pid = try spawnProcess(compiler, arguments, stdoutPath: log)
            guard reap(pid, timeout: 60) == .exited(0) else { throw HarnessError("clang failed:\n\(readText(log))") }
            return [UInt8](try Data(contentsOf: URL(fileURLWithPath: scratch.file("blob.elf"))))
        }

        @Test("a blob of the test's own, injected into a running process, answers a command from inside it")
        func ownBlob() throws {
            let scratch = try Scratch("injector-blob")
            defer { scratch.remove() }
            let blob = try ParasiteBlob(elf: try Self.buildBlob(in: scratch))
            #expect(blob.stoppedOffset == nil, "the test blob has no stop-signal entry")
            let fixture = try Fixture("counter", in: scratch)
            defer { fixture.cleanUp() }
            try fixture.waitReady()

            // Seize, inject, run, cure and detach on this one thread (ptrace is per tracer thread).
            let tracee = try Tracee.seize(fixture.pid)
            let answer: (sum: UInt64, pid: UInt64)
            do {
                let parasite = try Parasite.inject(into: tracee, argumentBytes: 64, blob: blob, protocolVersion: 77,
                                                   commandName: { $0 == 2 ? "ADD" : "command \($0)" })
                do {
                    let words = try parasite.run(2, input: (UInt64(40), UInt64(2)), output: (UInt64, UInt64).self)
                    answer = (words.0, words.1)
                    try parasite.cure()
                } catch {
                    try? parasite.cure()
                    throw error
                }
            } catch {
                try? tracee.detach()
                throw error
            }
            try tracee.detach()
            #expect(answer.sum == 42, "the blob's sum")
            #expect(answer.pid == UInt64(fixture.pid), "the blob ran in pid \(answer.pid), not in the fixture \(fixture.pid)")
            fixture.signal(SIGTERM)
            let exit = fixture.reapOriginal(timeout: 30)
            #expect(exit == .exited(0), "counter exited \(exit.map { "\($0)" } ?? "not at all") after the blob was cured")
            expectPass(fixture, "after the injected blob was cured")
        }
    }
}
