import CCryo
import CryoInjector
import CryoSystem
import FoundationEssentials
import SystemPackage

/// One kind of open file description: the state it keeps in files.img and
/// everything cryo does with it, in one file under Kinds/. Adding a kind is
/// that file plus its line in `DescriptorKinds.all` (and, for in-task work,
/// the parasite's side). The state is the kind: a file table entry cannot
/// name a kind without carrying its state.
protocol DescriptorKind: Codable, Sendable {
    /// `kind` in files.img.
    static var name: String { get }
    /// The key of the kind's own object in files.img; nil for a kind that keeps nothing but its path.
    static var key: String? { get }

    // Dump
    /// This descriptor's state, or nil when it is of another kind. Kinds are
    /// asked in registry order; the first that answers takes the descriptor.
    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> Self?
    /// The entry's `path`, shown and used in messages.
    func recordedPath(_ p: DescriptorProbe) -> String?
    /// Checks that need every process's descriptors (how sockets connect...), once the tree is dumped.
    static func finishDump(_ table: FileTableBuilder) throws

    // Image
    /// What is wrong with this entry's state, if anything.
    func validate() -> String?
    /// What is wrong across the entries of this kind (duplicates...), if anything.
    static func validate(_ files: [FileTable.OpenFile]) -> String?

    // Restore
    /// Refusals due before anything is created (a missing restore option...).
    static func checkBeforeRestore(_ files: [FileTable.OpenFile], options: KindOptions) throws
    /// A new description in the controller, ready to be passed to the tasks.
    func open(_ file: FileTable.OpenFile, object: String, context: OpenContext) throws -> FileDescriptor
    /// Parasite argument bytes `afterInstall` needs for this process at most.
    static func afterInstallBytes(_ installed: InstalledDescriptors) -> Int
    /// Work inside a restored process once all its descriptors are in place.
    static func afterInstall(_ installed: InstalledDescriptors, parasite: Parasite) throws
    /// Whether `afterInstall` may do anything for these descriptors (afterInstallBytes is room, never 0).
    static func hasAfterInstallWork(_ installed: InstalledDescriptors) -> Bool

    // Show
    /// One line for `cryo show`.
    func summary(_ file: FileTable.OpenFile) -> String

    // Binary file table (FileTableCodec)
    /// The kind's number in the binary file table (part of the format, never reused); nil keeps its entries as JSON.
    static var packCode: UInt16? { get }
    /// The whole state in four words and a string, or nil to keep this entry as JSON (a rare case of the kind).
    func pack() -> PackedState?
    /// The state `pack` gave, or nil when the words cannot be one (a corrupt image).
    static func unpack(_ packed: PackedState) -> Self?
}

/// A kind's state as a fixed-size record of the binary file table holds it.
struct PackedState: Equatable {
    var w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64
    var text: String?
}

extension DescriptorKind {
    static var key: String? { name }
    func recordedPath(_ p: DescriptorProbe) -> String? { nil }
    static func finishDump(_ table: FileTableBuilder) throws {}
    func validate() -> String? { nil }
    static func validate(_ files: [FileTable.OpenFile]) -> String? { nil }
    static func checkBeforeRestore(_ files: [FileTable.OpenFile], options: KindOptions) throws {}
    static func afterInstallBytes(_ installed: InstalledDescriptors) -> Int { 0 }
    static func afterInstall(_ installed: InstalledDescriptors, parasite: Parasite) throws {}
    static func hasAfterInstallWork(_ installed: InstalledDescriptors) -> Bool { false }
    func summary(_ file: FileTable.OpenFile) -> String { file.path ?? Self.name }
    static var packCode: UInt16? { nil }
    func pack() -> PackedState? { nil }
    static func unpack(_ packed: PackedState) -> Self? { nil }

    /// The states of this kind in a file table, with their entries.
    static func entries(_ files: [FileTable.OpenFile]) -> [(file: FileTable.OpenFile, state: Self)] {
        files.compactMap { f in (f.state as? Self).map { (f, $0) } }
    }
}

/// The registry of descriptor kinds.
enum DescriptorKinds {
    /// In the order dump asks them: memfd and mqueue before regular files, terminals before other character devices.
    static let all: [any DescriptorKind.Type] = [
        PidfdState.self,  // a pidfd is a regular file of pidfs
        ProcFileState.self,  // before regular files and directories: /proc/PID needs the restored process
        MemfdState.self,
        MqueueState.self,
        RegularFileState.self,
        DirectoryState.self,
        SymlinkState.self,
        TerminalState.self,
        CharacterDevice.self,
        PipeEndState.self,
        FifoState.self,
        InetSocketState.self,
        NetlinkSocketState.self,  // these two before unix sockets, which refuse every other family
        PacketSocketState.self,
        UnixSocketState.self,
        EventFDState.self,
        SignalFDState.self,
        TimerFDState.self,
        InotifyState.self,
        FanotifyState.self,
        EpollState.self,
    ]

    static func named(_ name: String) -> (any DescriptorKind.Type)? {
        all.first { $0.name == name }
    }

    static func dump(_ p: DescriptorProbe, into table: FileTableBuilder, id: Int) throws -> (any DescriptorKind)? {
        for kind in all {
            if let state = try kind.dump(p, into: table, id: id) { return state }
        }
        return nil
    }

    static func checkBeforeRestore(_ files: [FileTable.OpenFile], options: KindOptions) throws {
        for kind in all { try kind.checkBeforeRestore(files, options: options) }
    }

    static func afterInstallBytes(_ installed: InstalledDescriptors) -> Int {
        all.reduce(FileLock.afterInstallBytes(installed) + MemoryLayout<cryo_install_fds>.size) { $0 + $1.afterInstallBytes(installed) }
    }

    /// Whether afterInstall below has anything to do: a kind's own work, locks or an owner to set.
    static func hasAfterInstallWork(_ installed: InstalledDescriptors) -> Bool {
        all.contains { $0.hasAfterInstallWork(installed) }
            || installed.descriptors.contains { $0.locks?.isEmpty == false || installed.files[$0.file].owner != nil || $0.borrowed == true }
    }

    /// What each kind does once a process's descriptors are installed, then its locks, which any kind may hold.
    static func afterInstall(_ installed: InstalledDescriptors, parasite: Parasite) throws {
        for kind in all { try kind.afterInstall(installed, parasite: parasite) }
        try FileLock.afterInstall(installed, parasite: parasite)
        try FileOwner.afterInstall(installed, parasite: parasite)
        // Borrowed descriptors sit above all the process's own (and cryo's slots are closed by now): close them all.
        if let first = installed.descriptors.filter({ $0.borrowed == true }).map(\.fd).min() {
            var close = cryo_install_fds()
            close.close_from = first
            try parasite.run(CRYO_CMD_INSTALL_FDS, payload: bytes(of: close), replyBytes: 0)
        }
    }
}

/// Options of dump and restore that some kinds depend on.
struct KindOptions: Sendable {
    /// --tcp-established: established TCP connections are dumped and restored (otherwise refused).
    var tcpEstablished = false
    /// --tcp-close: connections are dumped without their state and restored closed.
    var tcpClose = false
    /// --skip-in-flight: connections not yet accepted are dropped from their listeners.
    var skipInFlight = false
    /// --shell-job: cryo's own terminal may be among the descriptors.
    var shellJob = false
    /// --leave-running: what dump takes out of a kernel object goes back.
    var leaveRunning = false
    /// --ghost-limit: the largest unlinked file whose contents go into the image.
    var ghostLimit = DumpOptions.defaultGhostLimit
    /// --ext-unix-sk: a unix datagram socket connected to a peer outside the tree is dumped (connected to its name again).
    var externalUnixSockets = false
    /// --network-lock: rules dropping each dumped connection's packets, added as connections are found.
    var networkLock: NetworkLock?
    /// restore --pidns: the tree's pids are those of a new pid namespace.
    var newPidNamespace = false
}

/// One restored process's descriptor table, installed, with the file table it names.
struct InstalledDescriptors {
    let descriptors: [DescriptorsRecord.Descriptor]
    let files: [FileTable.OpenFile]
    /// Shared by the whole restore: ids of descriptions some process already finished
    /// (an epoll's targets are added once, by the first process holding it).
    let finishedOnce: (Int) -> Bool

    /// (fd, entry, state) for every descriptor of kind K.
    func of<K: DescriptorKind>(_ kind: K.Type) -> [(fd: Int32, file: FileTable.OpenFile, state: K)] {
        // The metatype test first: a dynamic cast of every descriptor for every kind cost more
        // than the rest of installing 10,000 of them.
        descriptors.compactMap { d in
            type(of: files[d.file].state) == K.self ? (files[d.file].state as? K).map { (d.fd, files[d.file], $0) } : nil
        }
    }
}

/// What the kinds share while the file table is opened at restore: the
/// descriptions opened so far, and one rebuilder per kind that builds all its
/// objects together (pipes, sockets, pty pairs).
final class OpenContext {
    let files: [FileTable.OpenFile]
    let paths: ImagePaths
    let options: KindOptions
    /// By file id, a descriptor that holds it ("pid 42 fd 3"), for error messages.
    let holders: [Int: String]
    /// By file id, those opened so far.
    var opened: [FileDescriptor] = []
    private var rebuilders: [ObjectIdentifier: any KindRebuilder] = [:]

    init(files: [FileTable.OpenFile], paths: ImagePaths, options: KindOptions, holders: [Int: String] = [:]) {
        self.files = files
        self.paths = paths
        self.options = options
        self.holders = holders
    }

    /// How messages name description `f`: a descriptor holding it, its number and path.
    func object(_ f: FileTable.OpenFile) -> String {
        "\(holders[f.id].map { "\($0): " } ?? "")file #\(f.id) (\(f.path ?? f.kind))"
    }

    /// The kind's rebuilder, made on first use.
    func rebuilder<R: KindRebuilder>(_ type: R.Type) throws -> R {
        if let made = rebuilders[ObjectIdentifier(type)] as? R { return made }
        let made = try R(self)
        rebuilders[ObjectIdentifier(type)] = made
        return made
    }

    /// Once every description is open and the tree's processes exist.
    func finishRebuilders(pids: RestoredPids) throws {
        for r in rebuilders.values { try r.finish(self, pids: pids) }
    }

    /// cryo's own copies go once every description is open (or the opening failed).
    func closeRebuilders() {
        for r in rebuilders.values { r.closeAll() }
        rebuilders = [:]
    }
}

/// The pids of a restored tree, as cryo sees them.
struct RestoredPids {
    /// A pid of the image as cryo sees it; nil for one not restored.
    let host: (Int32) -> Int32?
    /// With --pidns: the new pid namespace (`/proc/PID/ns/pid`), where the image's pids are.
    let namespace: String?
}

/// Builds every object of one kind of the image at once, then hands out descriptions.
protocol KindRebuilder: AnyObject {
    init(_ context: OpenContext) throws
    /// Work that waits until every description is open and the processes exist (queued unix messages).
    func finish(_ context: OpenContext, pids: RestoredPids) throws
    /// Closes cryo's own copies of whatever was made.
    func closeAll()
}

extension KindRebuilder {
    func finish(_ context: OpenContext, pids: RestoredPids) throws {}
}

extension FileTable.OpenFile {
    private enum CodingKeys: String, CodingKey { case id, kind, flags, position, path, owner }
    private struct KindKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// `kind` names the kind; the kind's object sits beside it under its key.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(Int.self, forKey: .id)
        flags = try c.decode(UInt32.self, forKey: .flags)
        position = try c.decode(Int64.self, forKey: .position)
        path = try c.decodeIfPresent(String.self, forKey: .path)
        owner = try c.decodeIfPresent(FileOwner.self, forKey: .owner)
        let name = try c.decode(String.self, forKey: .kind)
        guard let kind = DescriptorKinds.named(name) else {
            throw DecodingError.dataCorruptedError(forKey: .kind, in: c, debugDescription: "unknown kind \(name)")
        }
        state = try Self.decodeState(kind, from: decoder)
    }

    private static func decodeState<K: DescriptorKind>(_ kind: K.Type, from decoder: Decoder) throws -> K {
        guard let key = K.key else { return try K(from: decoder) }
        let c = try decoder.container(keyedBy: KindKey.self)
        // An image made before the kind kept state of its own (directories) has no object under its key.
        if !c.contains(KindKey(stringValue: key)), let state = try? K(from: decoder) { return state }
        return try c.decode(K.self, forKey: KindKey(stringValue: key))
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(kind, forKey: .kind)
        try c.encode(flags, forKey: .flags)
        try c.encode(position, forKey: .position)
        try c.encodeIfPresent(path, forKey: .path)
        try c.encodeIfPresent(owner, forKey: .owner)
        try encodeState(state, to: encoder)
    }

    private func encodeState<K: DescriptorKind>(_ state: K, to encoder: Encoder) throws {
        guard let key = K.key else { return }
        var c = encoder.container(keyedBy: KindKey.self)
        try c.encode(state, forKey: KindKey(stringValue: key))
    }
}
