import ArgumentParser
import Cryo
import Foundation

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check", abstract: "Check the kernel features cryo relies on.")
    @Flag(help: "Print the results as JSON.") var json = false

    func run() throws {
        let results = KernelCheck.run()
        if json {
            print(try encodeJSON(results))
        } else {
            for r in results {
                let mark = r.ok ? "ok  " : (r.required ? "FAIL" : "no  ")
                print("\(mark) \(r.name.padding(toLength: 40, withPad: " ", startingAt: 0)) \(r.detail)")
            }
        }
        if results.contains(where: { !$0.ok && $0.required }) { throw ExitCode(1) }
    }
}

func encodeJSON<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}
