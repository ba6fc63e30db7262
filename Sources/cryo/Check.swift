import ArgumentParser

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check", abstract: "Check the kernel features cryo relies on.")
    func run() throws { print("check: not implemented yet") }
}

struct ShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show what an image holds.")
    @Argument var directory: String
    func run() throws { print("show: not implemented yet") }
}
