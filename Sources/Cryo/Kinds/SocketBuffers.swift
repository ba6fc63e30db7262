import CCryo
import CryoSystem
import SystemPackage

// Shared by the socket kinds (inet, netlink, packet): buffer sizes and
// SO_BUF_LOCK as the image recorded them.

enum SocketBuffers {
    /// Buffer sizes the program set (SO_BUF_LOCK says which; `everySize` also the others) as
    /// they were, the rest left to the kernel. Through the FORCE options, since the kernel
    /// doubles what it is given; then the lock bits as they were (none recorded: left alone).
    static func restore(_ fd: FileDescriptor, options: [String: Int32], everySize: Bool = false, what: String) throws {
        let lock = options["SO_BUF_LOCK"]
        for (name, bit, option, force, forceName) in [("SO_SNDBUF", Int32(1), CRYO_SO_SNDBUF, CRYO_SO_SNDBUFFORCE, "SO_SNDBUFFORCE"),
                                                      ("SO_RCVBUF", Int32(2), CRYO_SO_RCVBUF, CRYO_SO_RCVBUFFORCE, "SO_RCVBUFFORCE")] {
            guard let wanted = options[name], everySize || (lock ?? 0) & bit != 0,
                  try Sockets.option(fd, CRYO_SOL_SOCKET, option, name: name, object: what) != wanted else { continue }
            try Sockets.setOption(fd, CRYO_SOL_SOCKET, force, wanted / 2, name: forceName, object: what)
        }
        if let lock, try Sockets.option(fd, CRYO_SOL_SOCKET, CRYO_SO_BUF_LOCK, name: "SO_BUF_LOCK", object: what) != lock {
            try Sockets.setOption(fd, CRYO_SOL_SOCKET, CRYO_SO_BUF_LOCK, lock, name: "SO_BUF_LOCK", object: what)
        }
    }
}
