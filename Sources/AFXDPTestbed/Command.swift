// Runs the host's network tools (ip, ethtool) as child processes.
//
// posix_spawn rather than Foundation.Process: it keeps this module free of
// Foundation, and a child forked from a thread that has entered a network
// namespace (see NetworkNamespace) starts inside that namespace.

import CAFXDP
import Glibc

/// A failure while building or tearing down a test host.
///
/// The description says what was attempted, how it failed and what to check.
public struct TestbedError: Error, CustomStringConvertible, Sendable {
    /// The command that failed, if a command failed.
    public let command: [String]
    /// The command's exit status (or 128 + signal), if it ran.
    public let exitStatus: Int32?
    /// What the command wrote to standard error (trimmed).
    public let standardError: String
    /// What went wrong, in words.
    public let message: String
    /// What to do about it.
    public let hint: String

    public init(
        message: String,
        command: [String] = [],
        exitStatus: Int32? = nil,
        standardError: String = "",
        hint: String = ""
    ) {
        self.message = message
        self.command = command
        self.exitStatus = exitStatus
        self.standardError = standardError
        self.hint = hint
    }

    public var description: String {
        var text = "testbed: \(message)"
        if !command.isEmpty {
            text += "\n  command: \(command.joined(separator: " "))"
        }
        if let exitStatus {
            text += "\n  exit status: \(exitStatus)"
        }
        if !standardError.isEmpty {
            text += "\n  stderr: \(standardError)"
        }
        if !hint.isEmpty {
            text += "\n  hint: \(hint)"
        }
        return text
    }

    static let privilegeHint =
        "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); are iproute2 and ethtool installed? (scripts/install-deps)"

    static func hint(forStandardError text: String) -> String {
        if geteuid() != 0 || text.contains("Operation not permitted") || text.contains("Permission denied") {
            return privilegeHint
        }
        return "see the command's stderr above; `ip netns list` and `ip -all netns exec ip -o link` show the current state"
    }
}

/// What a finished child process left behind.
struct CommandOutput: Sendable {
    var status: Int32
    var standardOutput: String
    var standardError: String
}

/// Runs `args` (program name first, looked up in PATH and the sbin
/// directories) and returns its standard output. Throws `TestbedError` if it
/// cannot be started or exits with a status other than 0.
///
/// The child runs in the calling thread's network namespace.
@discardableResult
public func runCommand(_ args: [String]) throws -> String {
    let output = try spawnAndWait(args)
    guard output.status == 0 else {
        throw TestbedError(
            message: "command failed",
            command: args,
            exitStatus: output.status,
            standardError: trimmed(output.standardError),
            hint: TestbedError.hint(forStandardError: output.standardError)
        )
    }
    return output.standardOutput
}

/// Runs `args` and returns the status and both outputs without judging them.
func spawnAndWait(_ args: [String]) throws -> CommandOutput {
    precondition(!args.isEmpty, "runCommand needs at least a program name")
    guard let executable = resolveExecutable(args[0]) else {
        throw TestbedError(
            message: "'\(args[0])' not found in PATH or /usr/sbin, /sbin, /usr/bin, /bin",
            command: args,
            hint: "install iproute2 and ethtool (scripts/install-deps)"
        )
    }

    // Both pipes close on exec, so a child spawned by another thread at the
    // same moment cannot inherit our write ends and keep them open.
    var outPipe: [Int32] = [-1, -1]
    var errPipe: [Int32] = [-1, -1]
    let outResult = cafxdp_pipe_cloexec(&outPipe)
    guard outResult == 0 else {
        throw TestbedError(message: "pipe2 failed: \(errnoText(-outResult))", command: args)
    }
    let errResult = cafxdp_pipe_cloexec(&errPipe)
    guard errResult == 0 else {
        close(outPipe[0]); close(outPipe[1])
        throw TestbedError(message: "pipe2 failed: \(errnoText(-errResult))", command: args)
    }

    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
    posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)

    let (pid, spawnResult) = spawn(executable, args, actions: &actions, defaultSignals: [SIGPIPE])
    close(outPipe[1])
    close(errPipe[1])
    guard spawnResult == 0 else {
        close(outPipe[0]); close(errPipe[0])
        throw TestbedError(
            message: "could not start \(executable): \(errnoText(spawnResult))",
            command: args
        )
    }

    let (standardOutput, standardError) = drain(outPipe[0], errPipe[0])
    close(outPipe[0])
    close(errPipe[0])

    var waitStatus: Int32 = 0
    while waitpid(pid, &waitStatus, 0) < 0 {
        guard errno == EINTR else {
            throw TestbedError(message: "waitpid failed: \(errnoText(errno))", command: args)
        }
    }
    // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift cannot see.
    let status: Int32
    if waitStatus & 0x7f == 0 {
        status = (waitStatus >> 8) & 0xff
    } else {
        status = 128 + (waitStatus & 0x7f)
    }
    return CommandOutput(status: status, standardOutput: standardOutput, standardError: standardError)
}

/// Reads both pipes to end of file, alternating with poll so that neither can
/// fill up and stall the child.
/// Starts `args` (program name first, looked up like `runCommand`'s) in the
/// background with its output thrown away, and returns its PID: the caller
/// waits for it or kills it. SIGTERM and SIGINT are at their default action
/// in the child, whatever the test runner did with them.
public func spawnInBackground(_ args: [String]) throws -> pid_t {
    precondition(!args.isEmpty, "spawnInBackground needs at least a program name")
    guard let executable = resolveExecutable(args[0]) else {
        throw TestbedError(message: "'\(args[0])' not found", command: args)
    }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let (pid, result) = spawn(executable, args, actions: &actions, defaultSignals: [SIGTERM, SIGINT])
    guard result == 0 else {
        throw TestbedError(message: "could not start \(executable): \(errnoText(result))", command: args)
    }
    return pid
}

/// posix_spawn with a clean signal state: no blocked signals (the test
/// runner's threads may block some, and a child inherits its spawner's
/// mask) and `defaultSignals` at their default action. Returns the PID and
/// posix_spawn's result.
private func spawn(
    _ executable: String, _ args: [String], actions: inout posix_spawn_file_actions_t, defaultSignals: [Int32]
) -> (pid_t, Int32) {
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for signal in defaultSignals { sigaddset(&defaults, signal) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

    var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
    argv.append(nil)
    defer { for pointer in argv { free(pointer) } }
    var pid = pid_t()
    let result = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
    return (pid, result)
}

private func drain(_ outFD: Int32, _ errFD: Int32) -> (String, String) {
    var out: [UInt8] = []
    var err: [UInt8] = []
    var fds = [
        pollfd(fd: outFD, events: Int16(POLLIN), revents: 0),
        pollfd(fd: errFD, events: Int16(POLLIN), revents: 0),
    ]
    var open = 2
    var chunk = [UInt8](repeating: 0, count: 4096)
    while open > 0 {
        let ready = poll(&fds, nfds_t(fds.count), -1)
        if ready < 0 {
            if errno == EINTR { continue }
            break
        }
        for index in fds.indices where fds[index].fd >= 0 && fds[index].revents != 0 {
            let count = chunk.withUnsafeMutableBytes { read(fds[index].fd, $0.baseAddress, $0.count) }
            if count > 0 {
                if index == 0 {
                    out.append(contentsOf: chunk[0..<count])
                } else {
                    err.append(contentsOf: chunk[0..<count])
                }
            } else if count == 0 || errno != EINTR {
                fds[index].fd = -1  // poll ignores negative descriptors
                open -= 1
            }
        }
    }
    return (String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
}

private func resolveExecutable(_ name: String) -> String? {
    if name.contains("/") {
        return access(name, X_OK) == 0 ? name : nil
    }
    var directories: [String] = []
    if let path = getenv("PATH") {
        directories = String(cString: path).split(separator: ":").map(String.init)
    }
    // Non-login root shells and test runners often lack the sbin directories.
    directories += ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
    for directory in directories where !directory.isEmpty {
        let candidate = directory + "/" + name
        if access(candidate, X_OK) == 0 {
            return candidate
        }
    }
    return nil
}

func errnoText(_ code: Int32) -> String { errnoDescription(code) }

func trimmed(_ text: String) -> String {
    var scalars = Substring(text)
    while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
    while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
    return String(scalars)
}
