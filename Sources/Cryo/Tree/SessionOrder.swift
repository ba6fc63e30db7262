/// The order in which sessions come back. A child inherits its session when it is
/// cloned, so one that stayed in its parent's old session (forked before the parent
/// called setsid, as a daemon's helper or `setsid` after fork does) must be cloned
/// before its parent's setsid; its parent in turn must then be born into that old
/// session, and so on up to a process that is in it for good. Children in the
/// parent's new session come after the setsid. A process that needs a session no
/// ancestor can hand down is refused at dump.
struct SessionOrder: Equatable {
    /// Processes cloned before their creator's setsid (they keep its old session).
    var early: Set<Int32> = []
    /// Session leaders whose setsid waits until their early children exist.
    var deferred: Set<Int32> = []

    var isEmpty: Bool { early.isEmpty }

    /// `processes`: the live ones (no zombies), the root first, parents before children;
    /// `creator` is the process that clones each (its parent, or the sibling it shares with).
    static func plan(_ processes: [(pid: Int32, sid: Int32, creator: Int32)], root: Int32,
                     comm: (Int32) -> String) throws -> SessionOrder {
        var kids: [Int32: [Int32]] = [:]
        var sid: [Int32: Int32] = [:]
        for p in processes {
            sid[p.pid] = p.sid
            if p.pid != root { kids[p.creator, default: []].append(p.pid) }
        }
        var order = SessionOrder()
        // The session each process must be born into; nil: any (it leads its own, and no child needs its old one).
        var born: [Int32: Int32?] = [:]
        // Children come after their creators: from the last one up, every child is known before its creator.
        for p in processes.reversed() {
            let own = sid[p.pid]!
            var needed: Int32? = nil
            for kid in kids[p.pid] ?? [] {
                guard let wanted = born[kid] ?? nil, wanted != own else { continue }
                guard own == p.pid else {
                    throw CryoError("pid \(kid) (\(comm(kid))) must be born in session \(wanted), but the process that "
                        + "creates it, \(p.pid) (\(comm(p.pid))), is in session \(own) for good; a session whose leader is "
                        + "gone or elsewhere cannot be rebuilt yet")
                }
                if let needed, needed != wanted {
                    throw CryoError("pid \(p.pid) (\(comm(p.pid))) has children left in sessions \(needed) and \(wanted) "
                        + "from before its setsid; one process cannot have been in both, not supported")
                }
                needed = wanted
                order.early.insert(kid)
            }
            if needed != nil { order.deferred.insert(p.pid) }
            born[p.pid] = own == p.pid ? needed : own
        }
        if let wanted = born[root] ?? nil, wanted != sid[root]! {
            throw CryoError("pid \(root) (\(comm(root))) left children in session \(wanted), which it was in before its "
                + "setsid; that session is not in the dumped tree, not supported yet")
        }
        return order
    }

    /// `entries` (the root's descendants, parents first) reordered so that each creator's early
    /// children come before its other ones: the creator's setsid then sits between the two.
    func cloningOrder<Entry>(_ entries: [Entry], root: Int32, pid: (Entry) -> Int32, creator: (Entry) -> Int32) -> [Entry] {
        guard !isEmpty else { return entries }
        var kids: [Int32: [Int]] = [:]
        for (i, e) in entries.enumerated() { kids[creator(e), default: []].append(i) }
        var result: [Entry] = []
        var placed = [Bool](repeating: false, count: entries.count)
        var queue = [root]
        var next = 0
        while next < queue.count {
            let mine = kids[queue[next]] ?? []
            next += 1
            for i in mine.filter({ early.contains(pid(entries[$0])) }) + mine.filter({ !early.contains(pid(entries[$0])) }) where !placed[i] {
                placed[i] = true
                result.append(entries[i])
                queue.append(pid(entries[i]))
            }
        }
        for (i, e) in entries.enumerated() where !placed[i] { result.append(e) }
        return result
    }
}
