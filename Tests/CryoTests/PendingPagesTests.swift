// PendingPages: the set of pages a userfaultfd restore still has to load.
// Pure data structure tests: no root, no processes.

@testable import Cryo
import Testing

/// Deterministic, so a bound that holds once holds every time.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("pending pages (no root)")
struct PendingPagesTests {
    /// `count` runs of 3 pages with a 1-page hole after each: a heap with every 4th page untouched.
    static func fragmented(_ count: Int, base: UInt64 = 0x10_0000_0000) -> [PendingRun] {
        (0..<count).map { i in
            let start = base + UInt64(i) * 4 * 4096
            return PendingRun(start: start, end: start + 3 * 4096, offset: UInt64(i) * 3 * 4096)
        }
    }

    /// A page-granular model of the same set: which pages are pending, and each one's stream offset.
    struct Model {
        var pages: [UInt64: UInt64] = [:]
        init(_ runs: [PendingRun]) {
            for r in runs { for p in stride(from: r.start, to: r.end, by: 4096) { pages[p] = r.offset + (p - r.start) } }
        }
        mutating func remove(_ start: UInt64, _ end: UInt64) {
            for p in stride(from: start, to: end, by: 4096) { pages[p] = nil }
        }
        mutating func move(from: UInt64, to: UInt64, length: UInt64) {
            var moved: [UInt64: UInt64] = [:]
            for p in stride(from: from, to: from + length, by: 4096) { if let o = pages[p] { moved[p - from + to] = o } }
            remove(from, from + length)
            remove(to, to + length)
            pages.merge(moved) { $1 }
        }
    }

    static func check(_ set: PendingPages, against model: Model) {
        var seen: [UInt64: UInt64] = [:]
        var previousEnd: UInt64 = 0
        for r in set.runs {
            #expect(r.start < r.end && r.start >= previousEnd, "runs overlap or are out of order at 0x\(String(r.start, radix: 16))")
            previousEnd = r.end
            for p in stride(from: r.start, to: r.end, by: 4096) { seen[p] = r.offset + (p - r.start) }
        }
        #expect(seen == model.pages)
        #expect(set.bytes == UInt64(model.pages.count) * 4096)
        #expect(set.count == set.runs.count)
        #expect(set.isEmpty == model.pages.isEmpty)
        for p in model.pages.keys.sorted().prefix(50) { #expect(set.find(p + 100).map { $0.offset + (p - $0.start) } == model.pages[p]) }
    }

    @Test("cuts, removals and moves agree page by page with a simple model")
    func agreesWithModel() {
        var random = SplitMix64(state: 7)
        let base: UInt64 = 0x7f00_0000_0000
        let runs = PendingPagesTests.fragmented(300, base: base)
        var set = PendingPages(runs.shuffled(using: &random))
        var model = Model(runs)
        PendingPagesTests.check(set, against: model)
        let span: UInt64 = 300 * 4 * 4096
        for step in 0..<400 {
            let start = base + UInt64.random(in: 0..<(span / 4096), using: &random) * 4096
            let length = UInt64.random(in: 1...40, using: &random) * 4096
            switch step % 5 {
            case 0, 1, 2:
                set.remove(start, start + length)
                model.remove(start, start + length)
            case 3:
                let to = base + UInt64.random(in: 0..<(2 * span / 4096), using: &random) * 4096
                set.move(from: start, to: to, length: length)
                model.move(from: start, to: to, length: length)
            default:
                // What a background push does: the first run, at most 8 pages of it.
                if let first = set.first {
                    #expect(first.start == model.pages.keys.min())
                    let end = min(first.end, first.start + 8 * 4096)
                    set.remove(first.start, end)
                    model.remove(first.start, end)
                }
            }
            if step % 20 == 0 { PendingPagesTests.check(set, against: model) }
        }
        PendingPagesTests.check(set, against: model)
        while let first = set.first { set.remove(first.start, first.end) }
        #expect(set.isEmpty && set.bytes == 0 && set.count == 0)
    }

    @Test("the leading runs stop where the page stream is no longer contiguous or the limit is reached")
    func leadingRuns() {
        var set = PendingPages(PendingPagesTests.fragmented(100))
        #expect(set.leading(upTo: 256 << 10).count == 22)  // runs of 12 KiB starting below 256 KiB of stream
        #expect(set.leading(upTo: 4096).count == 1)
        let sixth = PendingPagesTests.fragmented(100)[5]
        set.remove(sixth.start + 4096, sixth.start + 8192)  // a hole in the stream after the 6th run's first page
        let leading = set.leading(upTo: 256 << 10)
        #expect(leading.count == 6 && leading.last == PendingRun(start: sixth.start, end: sixth.start + 4096, offset: sixth.offset))
        // From a mapped pages file: the lowest runs until they hold the limit, across the gap in the stream.
        let anywhere = set.leading(upTo: 256 << 10, streamContiguous: false)
        let held = anywhere.reduce(0) { $0 + ($1.end - $1.start) }
        #expect(anywhere.count == 23 && held >= 256 << 10 && held - (anywhere.last!.end - anywhere.last!.start) < 256 << 10)
        #expect(anywhere == Array(set.runs.prefix(23)))
        #expect(PendingPages([]).leading(upTo: 4096).isEmpty)
    }

    /// What one restore of n runs does: faults cut runs anywhere, then pushes empty the set from the front.
    /// Returns the tree steps per operation.
    static func stepsPerOperation(runs n: Int, faults: Int, pushes: Int) -> Double {
        var set = PendingPages(fragmented(n))
        var random = SplitMix64(state: 16)
        let base: UInt64 = 0x10_0000_0000, span = UInt64(n) * 4 * 4096
        let before = set.steps
        for _ in 0..<faults {
            let address = base + UInt64.random(in: 0..<(span / 4096), using: &random) * 4096
            // A 64 KiB fault chunk inside one run, as the server copies it.
            if let run = set.find(address) { set.remove(address, min(run.end, address + 16 * 4096)) }
        }
        for _ in 0..<pushes {
            guard let first = set.first else { break }
            set.remove(first.start, min(first.end, first.start + 64 * 4096))
        }
        set.remove(base + span / 3, base + span / 3 + 1024 * 4096)  // an munmap of 4 MiB
        // Every operation visits a node at least; fewer steps than operations means the count was lost
        // (a set rebuilt through init, say), and the bound below would then prove nothing.
        #expect(set.steps - before >= faults + pushes + 1, "\(set.steps - before) steps for \(faults + pushes + 1) operations")
        return Double(set.steps - before) / Double(faults + pushes + 1)
    }

    @Test("a million runs: each cut, push or removal stays logarithmic")
    func millionRunsStayLogarithmic() {
        // Counted tree steps, not time: the bound holds however loaded the machine is.
        let quarter = PendingPagesTests.stepsPerOperation(runs: 250_000, faults: 20_000, pushes: 20_000)
        let million = PendingPagesTests.stepsPerOperation(runs: 1_000_000, faults: 20_000, pushes: 20_000)
        // About 40 measured: a few walks down a tree of depth ~2 ln n. Linear work would be ~n.
        #expect(million < 120, "\(million) steps per operation for a million runs")
        // Four times the runs: logarithmic work grows by ~2/20, linear work would grow 4x.
        #expect(million < quarter * 1.5, "\(quarter) steps per operation for 250k runs, \(million) for 1M")
    }

    @Test("emptying a million runs from the front costs a bounded number of steps in all")
    func millionRunsDrain() {
        var set = PendingPages(PendingPagesTests.fragmented(1_000_000))
        #expect(set.count == 1_000_000 && set.bytes == 1_000_000 * 3 * 4096)
        let built = set.steps
        #expect(built == 1_000_000, "building counts a step per run")
        var operations = 0
        while let first = set.first {
            set.remove(first.start, first.end)
            operations += 1
        }
        #expect(operations == 1_000_000)
        #expect(set.isEmpty && set.bytes == 0)
        // Removing from the front of a treap touches its left spine only: a constant-ish number of steps each.
        let used = set.steps - built
        #expect(used >= operations, "\(used) steps for \(operations) removals: the count was lost")
        #expect(Double(used) / Double(operations) < 120, "\(used) steps for \(operations) front removals")
    }
}
