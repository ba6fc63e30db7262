import CZstd
import CryoSystem
import FoundationEssentials
import Glibc

/// zstd frames of a compressed pages file (`dump --compress`).
///
/// The page runs keep their offsets in the uncompressed page stream; that
/// stream is cut into frames of `frameSize` bytes (the last one shorter), each
/// compressed on its own, so any part can be read by decompressing only the
/// frames that hold it (restore, `show --pages`, a lazy restore).
public struct PageFrames: Codable, Sendable {
    public static let defaultFrameSize: UInt64 = 4 << 20
    /// The only method so far.
    public var method: String = "zstd"
    /// Uncompressed bytes per frame (a multiple of the page size).
    public var frameSize: UInt64
    /// Per frame: [offset in the pages file, compressed bytes]. Every frame is a
    /// zstd frame with a checksum (zstd keeps incompressible blocks raw inside it).
    public var frames: [[UInt64]]
}

enum PageCompression {
    /// Level 1: dump speed matters more than the last few percent.
    static let level: Int32 = 1

    static func bound(_ count: Int) -> Int { ZSTD_compressBound(count) }

    /// Compresses `source` into `destination` (at least `bound(source.count)` bytes).
    static func compress(_ context: OpaquePointer, _ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = ZSTD_compress2(context, destination.baseAddress, destination.count, source.baseAddress, source.count)
        if ZSTD_isError(n) != 0 { throw CryoError("zstd compression failed: \(String(cString: ZSTD_getErrorName(n)))") }
        return n
    }

    /// Decompresses one whole frame; anything but exactly `destination.count` bytes is corruption.
    static func decompress(_ context: OpaquePointer, _ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) -> String? {
        let n = ZSTD_decompressDCtx(context, destination.baseAddress, destination.count, source.baseAddress, source.count)
        if ZSTD_isError(n) != 0 { return String(cString: ZSTD_getErrorName(n)) }
        if n != destination.count { return "decompressed to \(n) bytes, expected \(destination.count)" }
        return nil
    }

    /// Each frame carries a checksum, so a flipped byte is refused rather than restored.
    static func makeCompressor() -> OpaquePointer {
        let c = ZSTD_createCCtx()!
        ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level)
        ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1)
        return c
    }
    static func freeCompressor(_ c: OpaquePointer) { ZSTD_freeCCtx(c) }
    static func makeDecompressor() -> OpaquePointer { ZSTD_createDCtx()! }
    static func freeDecompressor(_ c: OpaquePointer) { ZSTD_freeDCtx(c) }
}

extension PageFrames {
    /// Frames must tile the page stream and the pages file exactly.
    func validate(file: String, pageBytes: UInt64, pagesFileSize: UInt64) throws {
        guard method == "zstd" else { throw ImageError(file: file, record: "pageIndex", "unknown page compression \"\(method)\"") }
        guard frameSize > 0, frameSize % 4096 == 0, frameSize <= 64 << 20 else {
            throw ImageError(file: file, record: "pageIndex", "frame size \(frameSize) is not a page multiple up to 64 MiB")
        }
        let expected = (pageBytes + frameSize - 1) / frameSize
        guard UInt64(frames.count) == expected else {
            throw ImageError(file: file, record: "pageIndex", "\(frames.count) compressed frames, the page runs need \(expected)")
        }
        var offset: UInt64 = 0
        for (i, f) in frames.enumerated() {
            let length = min(frameSize, pageBytes - UInt64(i) * frameSize)
            guard f.count == 2, f[0] == offset, f[1] > 0, f[1] <= UInt64(PageCompression.bound(Int(length))) else {
                throw ImageError(file: file, record: "pageIndex", "compressed frame #\(i) \(f) is malformed or out of order")
            }
            offset += f[1]
        }
        guard offset == pagesFileSize else {
            throw ImageError(file: file, record: "pageIndex", "compressed frames add up to \(offset) bytes, pagesFileSize is \(pagesFileSize)")
        }
    }
}

/// Compresses a finished raw pages file into `target` frame by frame (the
/// frames as `dump --compress` writes them) and returns the index for it.
func compressPagesFile(_ source: String, to target: String, index: PageIndex) throws -> PageIndex {
    let input = try Files.open(source, .readOnly)
    defer { try? input.close() }
    let out = try Files.open(target, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
    defer { try? out.close() }
    let writer = PageWriter(file: out, path: target, compress: true)
    defer { writer.close() }
    let total = index.pageBytes, frameSize = PageFrames.defaultFrameSize
    for frameStart in stride(from: UInt64(0), to: total, by: Int(frameSize)) {
        let count = Int(min(frameSize, total - frameStart))
        try writer.writeFrame(count: count) { view in
            let n = try input.read(fromAbsoluteOffset: Int64(frameStart), into: view)
            if n != count { throw CryoError("\(source): short read at offset \(frameStart)") }
        }
    }
    let (frames, fileSize) = try writer.finishFrames()
    var result = index
    result.pagesFileSize = fileSize
    result.compression = PageFrames(frameSize: frameSize, frames: frames)
    return result
}
