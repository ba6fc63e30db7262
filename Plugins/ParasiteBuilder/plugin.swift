import Foundation
import PackagePlugin

/// Compiles the freestanding parasite in Parasite/ with the toolchain's clang
/// on every build and embeds the linked blob into the target as Swift source.
@main
struct ParasiteBuilder: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let parasiteDirectory = context.package.directoryURL.appending(path: "Parasite")
        let protocolHeaders = context.package.directoryURL.appending(path: "Sources/CCryo/include")
        let sources = try FileManager.default.contentsOfDirectory(atPath: parasiteDirectory.path)
            .filter { $0.hasSuffix(".c") || $0.hasSuffix(".S") || $0.hasSuffix(".ld") || $0.hasSuffix(".h") }
            .sorted()
            .map { parasiteDirectory.appending(path: $0) }
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedParasite.swift")
        let clang = try context.tool(named: "clang").url
        return [
            .buildCommand(
                displayName: "Building the parasite blob",
                executable: try context.tool(named: "ParasiteEmbed").url,
                arguments: [
                    clang.path, parasiteDirectory.path, protocolHeaders.path,
                    context.pluginWorkDirectoryURL.path, output.path,
                ],
                inputFiles: sources + ["parasite_protocol.h", "injector_protocol.h"].map { protocolHeaders.appending(path: $0) },
                outputFiles: [output])
        ]
    }
}
