import Foundation
import PackagePlugin

/// Writes the commit cryo is built from into the `cryo` target, for
/// `cryo --version` (CRIU prints its GitCommitID the same way). Runs before
/// every build and rewrites the file only when the commit changed, so an
/// unchanged tree recompiles nothing.
@main
struct VersionStamp: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let output = context.pluginWorkDirectoryURL.appending(path: "Stamp")
        let script = """
            commit=$(git -C "$1" rev-parse HEAD 2>/dev/null) || commit=unknown
            [ -n "$(git -C "$1" status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit-dirty"
            text="let cryoCommit = \\"$commit\\""
            mkdir -p "$2"
            [ "$(cat "$2/Commit.swift" 2>/dev/null)" = "$text" ] || printf '%s\\n' "$text" > "$2/Commit.swift"
            """
        return [
            .prebuildCommand(
                displayName: "Stamping the commit into cryo --version",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: ["-c", script, "sh", context.package.directoryURL.path, output.path],
                outputFilesDirectory: output)
        ]
    }
}
