import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// `dump-incomplete` in an image folder: written when a dump starts, removed
/// as its last step. A dump killed midway, or one that ran out of space (the
/// partial files are removed, the mark stays with the reason), leaves a
/// folder restore refuses in one line rather than one that looks whole.
enum IncompleteMark {
    static let name = "dump-incomplete"

    static func path(_ paths: ImagePaths) -> String { "\(paths.directory)/\(name)" }

    /// Replaces the mark with `reason`, one line.
    static func write(_ paths: ImagePaths, _ reason: String) throws {
        let file = path(paths)
        unlink(file)
        let fd = try Files.open(file, .writeOnly, options: [.create, .exclusiveCreate, .noFollow], permissions: [.ownerReadWrite])
        defer { try? fd.close() }
        try Files.write(fd, reason.utf8.map { $0 == 10 ? 32 : $0 } + [10], path: file)
    }

    static func remove(_ paths: ImagePaths) { unlink(path(paths)) }

    /// The refusal for a folder that holds the mark, or nil.
    static func refusal(_ paths: ImagePaths) -> CryoError? {
        guard Files.exists(path(paths)) else { return nil }
        let reason = ((try? Files.readString(path(paths))) ?? "").split(separator: "\n").first.map(String.init) ?? "no reason recorded"
        return CryoError("image folder \(paths.directory) is incomplete (\(name): \(reason)); it cannot be restored")
    }

    /// The storage filled up (ENOSPC, EDQUOT, EFBIG), however deep the error was wrapped.
    static func isStorageFull(_ error: Error) -> Bool {
        if let error = error as? SyscallError { return [.noSpace, .diskQuotaExceeded, .fileTooLarge].contains(error.errno) }
        let text = "\(error)"
        return ["ENOSPC", "EDQUOT", "EFBIG"].contains { text.contains($0) }
    }
}
