import Glibc

// A lock and a detached thread over pthreads, in place of Foundation's NSLock
// and Thread (cryo imports FoundationEssentials only; see Text.swift).

/// A mutex around a closure.
public final class Lock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    public init() { pthread_mutex_init(mutex, nil) }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// Runs `body` on a new detached thread; `name` shows in /proc/PID/task/TID/comm
/// (at most 15 bytes). Fails only when the system cannot create a thread.
public func startThread(name: String? = nil, _ body: @escaping @Sendable () -> Void) {
    final class Box { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }
    let named: @Sendable () -> Void = {
        // Not the pin of the thread that starts it (a restore's lanes are pinned to their CPUs).
        if let mask = ThreadStartAffinity.mask { _ = try? Processes.setAffinity(0, mask) }
        // pthread_setname_np is hidden from Swift's Glibc; the comm file does the same (best effort).
        if let name {
            let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
            if fd >= 0 { _ = write(fd, name, min(name.utf8.count, 15)); close(fd) }
        }
        body()
    }
    let context = Unmanaged.passRetained(Box(named)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(&thread, nil, { context in
        let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
        box.body()
        return nil
    }, context)
    guard result == 0 else {
        Unmanaged<Box>.fromOpaque(context).release()
        fatalError("pthread_create: \(String(cString: strerror(result)))")
    }
    pthread_detach(thread)
}

/// While some of cryo's threads are pinned to one CPU each (a restore's lanes), the CPUs a thread
/// started meanwhile takes instead of inheriting its starter's pin.
public enum ThreadStartAffinity {
    private static let lock = Lock()
    nonisolated(unsafe) private static var current: [UInt64]?
    public static var mask: [UInt64]? {
        get { lock.withLock { current } }
        set { lock.withLock { current = newValue } }
    }
}
