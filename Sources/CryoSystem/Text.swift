import Glibc

// The few string helpers cryo took from Foundation's NSString. cryo imports
// FoundationEssentials only: full Foundation links ICU's tables (some 60 MB)
// into the static binary, for nothing a checkpoint tool prints or parses.

extension StringProtocol {
    /// Without leading and trailing whitespace (spaces, tabs, newlines).
    public func trimmed() -> String {
        guard let first = firstIndex(where: { !$0.isWhitespace }),
              let last = lastIndex(where: { !$0.isWhitespace }) else { return "" }
        return String(self[first...last])
    }

    /// Padded with spaces, or cut, to exactly `width` characters (like NSString's padding(toLength:)).
    public func padded(to width: Int) -> String {
        count >= width ? String(prefix(width)) : String(self) + String(repeating: " ", count: width - count)
    }
}

extension String {
    /// printf-style formatting through vsnprintf, for numbers only (no `%@`).
    public init(printf format: String, _ arguments: CVarArg...) {
        let length = withVaList(arguments) { vsnprintf(nil, 0, format, $0) }
        guard length > 0 else { self = ""; return }
        var buffer = [CChar](repeating: 0, count: Int(length) + 1)
        _ = withVaList(arguments) { vsnprintf(&buffer, buffer.count, format, $0) }
        self = String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The last part of a path ("b" for "/a/b/"), like NSString's lastPathComponent.
public func fileName(of path: String) -> String {
    var trimmed = Substring(path)
    while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
    if trimmed == "/" { return "/" }
    guard let slash = trimmed.lastIndex(of: "/") else { return String(trimmed) }
    return String(trimmed[trimmed.index(after: slash)...])
}

/// The path without its last part ("/a" for "/a/b", "/" for "/a", "" for "b"),
/// like NSString's deletingLastPathComponent.
public func folder(of path: String) -> String {
    var trimmed = Substring(path)
    while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
    if trimmed == "/" { return "/" }
    guard let slash = trimmed.lastIndex(of: "/") else { return "" }
    if slash == trimmed.startIndex { return "/" }
    var folder = trimmed[..<slash]
    while folder.count > 1, folder.hasSuffix("/") { folder = folder.dropLast() }
    return String(folder)
}
