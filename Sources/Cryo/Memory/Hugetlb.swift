import CryoSystem
import FoundationEssentials
import Glibc
import SystemPackage

/// hugetlb memory: private and shared MAP_HUGETLB mappings and SHM_HUGETLB
/// segments. Its pages come from the kernel's pool of huge pages
/// (vm.nr_hugepages), not from ordinary memory: at dump each such mapping
/// records its page size (its hugetlbfs file's f_bsize); at restore it is
/// mapped again with MAP_HUGETLB of that size (shared objects and segments made
/// with it), and before anything is created the pool must hold every page the
/// image reserves, or the restore is refused in one line. Never a fault on a
/// page the pool cannot give (SIGBUS): every page cryo writes is reserved first.
/// MFD_HUGETLB memfds are made again with it too (Memfd.swift); a private mapping of
/// one is the restored memfd mapped MAP_PRIVATE, its pages that the task wrote
/// (anonymous copies, PAGEMAP_SCAN tells them from the file's) written into it.
enum Hugetlb {
    /// The page size of the hugetlb memory mapped at [start, end) in `pid`, nil when it is not on hugetlbfs.
    static func pageSize(pid: pid_t, start: UInt64, end: UInt64) throws -> UInt64? {
        let object = "pid \(pid): mapping 0x\(hex(start))-0x\(hex(end))"
        let handle: FileDescriptor
        do { handle = try Files.open("/proc/\(pid)/map_files/\(hex(start))-\(hex(end))", .readOnly) } catch {
            throw CryoError("\(object): \(error)")
        }
        defer { try? handle.close() }
        return try FileFacts.hugePageSize(handle, object: object)
    }

    /// MAP_HUGETLB with the page size (its log2 in bits 26-31: MAP_HUGE_2MB, MAP_HUGE_1GB...).
    static func mapFlags(_ pageSize: UInt64) -> Int32 {
        0x40000 | (Int32(pageSize.trailingZeroBitCount) << 26)
    }

    static func kilobytes(_ pageSize: UInt64) -> String { "\(pageSize >> 10) kB" }

    /// Free pages of the pool of `pageSize`, not promised to a mapping already; nil when the kernel has no such pool.
    static func available(_ pageSize: UInt64) -> UInt64? {
        let folder = "/sys/kernel/mm/hugepages/hugepages-\(pageSize >> 10)kB"
        func value(_ name: String) -> UInt64? { (try? Files.readString("\(folder)/\(name)")).flatMap { UInt64($0.trimmed()) } }
        guard let free = value("free_hugepages") else { return nil }
        return free - min(free, value("resv_hugepages") ?? 0)
    }

    /// Before anything is created: the pool must hold every huge page the image reserves
    /// (whole private mappings unless MAP_NORESERVE, else the pages they hold; whole shared
    /// objects; segments that must be made again).
    static func checkBeforeRestore(_ image: Image) throws {
        var needed: [UInt64: (pages: UInt64, first: String)] = [:]
        func need(_ size: UInt64, _ pages: UInt64, _ what: @autoclosure () -> String) {
            guard pages > 0 else { return }
            if let known = needed[size] { needed[size] = (known.pages + pages, known.first) } else { needed[size] = (pages, what()) }
        }
        for task in image.tasks {
            // A private mapping of an MFD_HUGETLB memfd reserves its own pages too, for the copies its writes make.
            for m in task.memory.mappings where m.kind == .anonymous || (m.kind == .memfd && !m.shared) {
                guard let size = m.hugePageSize else { continue }
                let what = "pid \(task.core.pid) mapping 0x\(hex(m.start))"
                if !m.noReserve {
                    need(size, (m.length + size - 1) / size, what)
                    continue
                }
                // Without a reservation only the pages it holds are taken, one huge page each.
                var pages = Set<UInt64>()
                for run in task.pageIndex.runs where run.address < m.end && run.end > m.start {
                    var page = max(run.address, m.start) / size
                    while page * size < min(run.end, m.end) { pages.insert(page); page += 1 }
                }
                need(size, UInt64(pages.count), what)
            }
        }
        for object in image.sharedMemory.objects {
            guard let size = object.hugePageSize else { continue }
            let user = image.tasks.first { $0.memory.mappings.contains { $0.shmem == object.id } }
            need(size, (object.size + size - 1) / size,
                 user.map { t in "pid \(t.core.pid) mapping 0x\(hex(t.memory.mappings.first { $0.shmem == object.id }!.start))" }
                    ?? "shared memory #\(object.id)")
        }
        for (file, state) in MemfdState.entries(image.fileTable.files) {
            guard let size = state.hugePageSize else { continue }
            // Filled through a mapping of all of it, and mapped whole by the tasks: all its pages.
            need(size, (UInt64(max(state.size, 0)) + size - 1) / size, "memfd \(state.name) (file #\(file.id))")
        }
        for segment in image.inventory.sysvSharedMemory ?? [] {
            guard let size = segment.hugePageSize, (try? SysVShm.status(segment.id)) ?? nil == nil else { continue }
            need(size, (segment.size + size - 1) / size, "System V segment \(segment.id)")
        }
        for (size, (pages, first)) in needed.sorted(by: { $0.key < $1.key }) {
            guard let free = available(size) else {
                throw CryoError("\(first) is hugetlb memory of \(kilobytes(size)) pages, which this kernel does not have "
                    + "(no /sys/kernel/mm/hugepages/hugepages-\(size >> 10)kB)")
            }
            if free < pages {
                throw CryoError("\(first) is hugetlb memory: the image needs \(pages) huge pages of \(kilobytes(size)) and \(free) are free; "
                    + "raise vm.nr_hugepages (/sys/kernel/mm/hugepages/hugepages-\(size >> 10)kB/nr_hugepages) to restore")
            }
        }
    }
}
