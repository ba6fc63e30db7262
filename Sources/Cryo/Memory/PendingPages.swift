/// A range of pages still to load, and where its first page is in the page stream.
struct PendingRun: Equatable {
    var start: UInt64
    var end: UInt64
    var offset: UInt64  // of `start` in the pages file
}

/// Pages of one address space not loaded yet: disjoint runs ordered by address.
///
/// A restore fills a fragmented heap run by run (131k runs for a 2 GiB heap
/// with every 4th page untouched), faults cut runs in two anywhere, and
/// munmap/mremap drop or move whole ranges. The runs are therefore kept in a
/// treap (a search tree balanced by random priorities) so that every one of
/// these costs O(log n) expected steps whatever the number of runs; a sorted
/// array costs O(n) per cut and made a restore quadratic. Nodes live in one
/// array and refer to each other by index: a copy (for a forked child) is a
/// copy of two arrays, and nothing is reference counted per node.
struct PendingPages {
    private struct Node {
        var run: PendingRun
        var priority: UInt64
        var left: Int32 = -1
        var right: Int32 = -1
    }

    private var nodes: [Node] = []
    private var freeNodes: [Int32] = []
    private var root: Int32 = -1
    private var randomState: UInt64 = 0x243F_6A88_85A3_08D3  // fixed seed: runs are reproducible, and nothing here is adversarial

    /// Bytes still pending.
    private(set) var bytes: UInt64 = 0
    /// Number of runs still pending.
    private(set) var count = 0
    /// Tree nodes visited or rebuilt so far, the ones `init` built included: lets a test bound the
    /// work per operation without a clock (a set made anew counts from its size, never from zero).
    private(set) var steps = 0

    var isEmpty: Bool { root < 0 }

    /// `runs` must be disjoint; they need not be sorted. O(n log n) for the sort, O(n) for the tree.
    init(_ runs: [PendingRun]) {
        let sorted = runs.allSatisfy({ $0.start < $0.end }) ? runs : runs.filter { $0.start < $0.end }
        let ordered = zip(sorted, sorted.dropFirst()).allSatisfy { $0.start < $1.start } ? sorted : sorted.sorted { $0.start < $1.start }
        nodes.reserveCapacity(ordered.count)
        // A Cartesian tree built left to right with a stack of the right spine: linear time.
        var spine: [Int32] = []
        for run in ordered {
            let i = makeNode(run)
            bytes += run.end - run.start
            count += 1
            var last: Int32 = -1
            while let top = spine.last, nodes[Int(top)].priority < nodes[Int(i)].priority { last = spine.removeLast() }
            nodes[Int(i)].left = last
            if let top = spine.last { nodes[Int(top)].right = i }
            spine.append(i)
        }
        root = spine.first ?? -1
        steps = ordered.count
    }

    /// Every pending run in address order (O(n): for logs and tests).
    var runs: [PendingRun] {
        var result: [PendingRun] = []
        result.reserveCapacity(count)
        var stack: [Int32] = []
        var t = root
        while t >= 0 || !stack.isEmpty {
            while t >= 0 { stack.append(t); t = nodes[Int(t)].left }
            let i = stack.removeLast()
            result.append(nodes[Int(i)].run)
            t = nodes[Int(i)].right
        }
        return result
    }

    /// The lowest pending run (what a background push loads next).
    var first: PendingRun? {
        var t = root
        guard t >= 0 else { return nil }
        while nodes[Int(t)].left >= 0 { t = nodes[Int(t)].left }
        return nodes[Int(t)].run
    }

    /// The lowest pending runs whose pages follow each other in the page stream, up to
    /// `limit` bytes of it (the last run may reach past): what one read can fetch. O(log n + k).
    /// With `streamContiguous` false, the lowest runs wherever their pages are in the stream,
    /// until they hold `limit` bytes (the last run may reach past): what copies from a mapped
    /// pages file can take at once.
    func leading(upTo limit: UInt64, streamContiguous: Bool = true) -> [PendingRun] {
        var result: [PendingRun] = []
        var stack: [Int32] = []
        var held: UInt64 = 0
        var t = root
        while t >= 0 || !stack.isEmpty {
            while t >= 0 { stack.append(t); t = nodes[Int(t)].left }
            let i = stack.removeLast()
            let run = nodes[Int(i)].run
            if !streamContiguous {
                guard held < limit else { break }
                held += run.end - run.start
            } else if let first = result.first {
                let last = result[result.count - 1]
                guard run.offset == last.offset + (last.end - last.start), run.offset - first.offset < limit else { break }
            }
            result.append(run)
            t = nodes[Int(i)].right
        }
        return result
    }

    /// The run holding `address`, if that page is still to load.
    func find(_ address: UInt64) -> PendingRun? { index(containing: address).map { nodes[Int($0)].run } }

    /// Forgets [start, end): loaded, or discarded by the process (munmap, MADV_DONTNEED).
    mutating func remove(_ start: UInt64, _ end: UInt64) {
        guard start < end, root >= 0 else { return }
        // A run that starts before the range keeps its head, and its tail when it reaches past the range.
        if let i = index(containing: start), nodes[Int(i)].run.start < start {
            let run = nodes[Int(i)].run
            nodes[Int(i)].run.end = start
            bytes -= run.end - start
            if run.end > end {
                insert(PendingRun(start: end, end: run.end, offset: run.offset + (end - run.start)))
                return
            }
        }
        // Every other run that meets the range starts inside it.
        let (left, rest) = split(root, before: start)
        var (middle, right) = split(rest, before: end)
        if middle >= 0 {
            var last = middle
            while nodes[Int(last)].right >= 0 { last = nodes[Int(last)].right }
            let tail = nodes[Int(last)].run
            release(middle)
            if tail.end > end {
                let kept = PendingRun(start: end, end: tail.end, offset: tail.offset + (end - tail.start))
                bytes += kept.end - kept.start
                count += 1
                right = merge(makeNode(kept), right)
            }
        }
        root = merge(left, right)
    }

    /// mremap moved [from, from + length) to `to`: what was pending moves along (O(log n) plus the runs moved).
    mutating func move(from: UInt64, to: UInt64, length: UInt64) {
        var moved: [PendingRun] = []
        collect(root, from, from + length, into: &moved)
        remove(from, from + length)
        remove(to, to + length)
        for run in moved {
            let start = max(run.start, from), end = min(run.end, from + length)
            insert(PendingRun(start: start - from + to, end: end - from + to, offset: run.offset + (start - run.start)))
        }
    }

    // MARK: - The tree

    /// Adds a run that overlaps no pending run.
    private mutating func insert(_ run: PendingRun) {
        let (left, right) = split(root, before: run.start)
        bytes += run.end - run.start
        count += 1
        root = merge(merge(left, makeNode(run)), right)
    }

    private func index(containing address: UInt64) -> Int32? {
        var t = root
        while t >= 0 {
            let run = nodes[Int(t)].run
            if run.end <= address { t = nodes[Int(t)].right } else if run.start > address { t = nodes[Int(t)].left } else { return t }
        }
        return nil
    }

    /// Runs of the subtree `t` that meet [start, end), in address order.
    private func collect(_ t: Int32, _ start: UInt64, _ end: UInt64, into result: inout [PendingRun]) {
        guard t >= 0 else { return }
        let node = nodes[Int(t)]
        if node.run.end > start { collect(node.left, start, end, into: &result) }
        if node.run.end > start && node.run.start < end { result.append(node.run) }
        if node.run.start < end { collect(node.right, start, end, into: &result) }
    }

    /// (runs starting below `key`, the others).
    private mutating func split(_ t: Int32, before key: UInt64) -> (Int32, Int32) {
        guard t >= 0 else { return (-1, -1) }
        steps += 1
        if nodes[Int(t)].run.start < key {
            let (low, high) = split(nodes[Int(t)].right, before: key)
            nodes[Int(t)].right = low
            return (t, high)
        }
        let (low, high) = split(nodes[Int(t)].left, before: key)
        nodes[Int(t)].left = high
        return (low, t)
    }

    /// Joins two trees, every run of `a` below every run of `b`.
    private mutating func merge(_ a: Int32, _ b: Int32) -> Int32 {
        guard a >= 0 else { return b }
        guard b >= 0 else { return a }
        steps += 1
        if nodes[Int(a)].priority > nodes[Int(b)].priority {
            nodes[Int(a)].right = merge(nodes[Int(a)].right, b)
            return a
        }
        nodes[Int(b)].left = merge(a, nodes[Int(b)].left)
        return b
    }

    private mutating func makeNode(_ run: PendingRun) -> Int32 {
        // splitmix64
        randomState &+= 0x9E37_79B9_7F4A_7C15
        var z = randomState
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        let node = Node(run: run, priority: z ^ (z >> 31))
        steps += 1
        if let i = freeNodes.popLast() {
            nodes[Int(i)] = node
            return i
        }
        nodes.append(node)
        return Int32(nodes.count - 1)
    }

    /// Frees every node of the subtree `t` and drops its runs from the totals
    /// (each node is freed once after being made once: amortized constant).
    private mutating func release(_ t: Int32) {
        var stack = [t]
        while let i = stack.popLast() {
            let node = nodes[Int(i)]
            bytes -= node.run.end - node.run.start
            count -= 1
            steps += 1
            freeNodes.append(i)
            if node.left >= 0 { stack.append(node.left) }
            if node.right >= 0 { stack.append(node.right) }
        }
    }
}
