// swift-tools-version:6.0
import PackageDescription

// Concrete generic types (a Dictionary of cryo's own keys, say) are made through their metadata
// accessors, not by demangling their names at run time: each of those checks the type's
// conformances by scanning all 7,000 conformance records of the binary. A restore made 185
// such types before its first clone3: 34% of its instructions (callgrind).
let concreteMetadataAccessors: [SwiftSetting] = [
    .unsafeFlags(["-Xfrontend", "-disable-concrete-type-metadata-mangled-name-accessors"], .when(configuration: .release))]

let package = Package(
    name: "cryo",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "cryo", targets: ["cryo"]),
        .library(name: "CryoInjector", targets: ["CryoInjector"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // TLS for `cryo migrate`/`receive`; only the CryoNet target uses them. swift-crypto,
        // swift-certificates and swift-asn1 make the key pair and certificate derived from the key file.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
    ],
    targets: [
        // What Swift cannot import: variadic ptrace/syscall, clone3, register structs.
        .target(name: "CCryo"),
        .systemLibrary(name: "CElf", pkgConfig: "libelf", providers: [.apt(["libelf-dev"])]),
        // libunwind's remote unwinder and its ptrace accessors, for `cryo bt`.
        .systemLibrary(name: "CUnwind", pkgConfig: "libunwind-generic", providers: [.apt(["libunwind-dev", "liblzma-dev"])]),
        // zstd for compressed page images (`dump --compress`).
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .target(
            name: "CryoSystem",
            dependencies: ["CCryo", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: concreteMetadataAccessors),
        // Host tool that turns the linked parasite ELF into a Swift source file.
        .executableTarget(name: "ParasiteEmbed"),
        .plugin(name: "ParasiteBuilder", capability: .buildTool(), dependencies: ["ParasiteEmbed"]),
        // The commit for `cryo --version`.
        .plugin(name: "VersionStamp", capability: .buildTool()),
        .target(
            name: "CryoInjector",
            dependencies: ["CryoSystem", "CCryo", "CElf"],
            swiftSettings: concreteMetadataAccessors),
        .target(
            name: "Cryo",
            dependencies: [
                "CryoInjector", "CryoSystem", "CCryo", "CElf", "CUnwind", "CZstd",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: concreteMetadataAccessors,
            // cryo's own parasite blob, built from Parasite/ and embedded here (not in the injector library).
            plugins: ["ParasiteBuilder"]),
        // The migration stream over TLS: kept apart so Cryo builds without BoringSSL.
        .target(
            name: "CryoNet",
            dependencies: [
                "Cryo", "CryoSystem",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]),
        .executableTarget(
            name: "cryo",
            dependencies: [
                "Cryo", "CryoSystem", "CryoNet",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            // A release binary without DWARF and symbols: 17 MB instead of 34 (the symbols of
            // the linked-in stdlib and Foundation are most of it). Debug builds keep them all.
            // Nor does it export its 32,000 Swift symbols (the static stdlib's link line asks for
            // that): the dynamic symbol table was faulted in and searched at every start, 0.75 ms
            // of the 5 ms a `cryo --version` takes (measured in alternating runs).
            swiftSettings: concreteMetadataAccessors,
            linkerSettings: [.unsafeFlags(["-Xlinker", "--strip-all", "-Xlinker", "--no-export-dynamic"],
                                          .when(configuration: .release))],
            plugins: ["VersionStamp"]),
        .testTarget(name: "CryoTests", dependencies: ["cryo", "Cryo", "CryoInjector", "CryoSystem", "CryoNet"]),
    ]
)
