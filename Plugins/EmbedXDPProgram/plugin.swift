// EmbedXDPProgram: compiles the project's XDP program and embeds the object in
// the target it is applied to, so that `swift build` alone yields a binary that
// carries its own program (no file to install, no path to find at run time).
//
//   bpf/afxdp_redirect.bpf.c --clang -target bpf--> afxdp_redirect.bpf.o
//                            --afxdp-embed-------> EmbeddedXDPProgram.swift
//
// Both steps run as ONE build command (afxdp-embed runs clang, then encodes):
// SwiftPM puts every declared output of a plugin command that is not a source
// file into a resource bundle, so a separate clang command would give the
// target a Bundle.module and a Foundation dependency for an intermediate file
// (swiftlang/swift-package-manager#7116). The object stays, undeclared, in the
// plugin work directory. The command reruns when the C source, a header beside
// it, or the toolchain's clang changes.

import Foundation
import PackagePlugin

@main
struct EmbedXDPProgram: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
        let packageRoot = context.package.directoryURL
        let bpfDirectory = packageRoot.appending(path: "bpf", directoryHint: .isDirectory)
        let source = bpfDirectory.appending(path: "afxdp_redirect.bpf.c")
        let object = context.pluginWorkDirectoryURL.appending(path: "afxdp_redirect.bpf.o")
        let generated = context.pluginWorkDirectoryURL.appending(path: "EmbeddedXDPProgram.swift")

        // The toolchain's own clang has the BPF backend; the host may have no clang.
        let clang = try context.tool(named: "clang")
        let embed = try context.tool(named: "afxdp-embed")

        var clangArguments = ["-target", "bpf", "-O2", "-g", "-Wall"]
        // <linux/types.h> includes <asm/types.h>, which Debian keeps in the
        // multiarch directory; clang does not search it when targeting bpf.
        if let multiarch = Self.hostMultiarchIncludeDirectory() {
            clangArguments += ["-I", multiarch]
        }
        // No -ffile-prefix-map: the BPF backend copies source lines into the
        // BTF line info (shown by the verifier and bpftool) by opening the file
        // under its recorded name, so that name must stay a real path.
        clangArguments += [
            "-c", source.path(percentEncoded: false),
            "-o", object.path(percentEncoded: false),
        ]

        return [
            .buildCommand(
                displayName: "Compiling and embedding XDP program afxdp_redirect.bpf.c in \(target.name)",
                executable: embed.url,
                arguments: [object.path(percentEncoded: false), generated.path(percentEncoded: false), "--",
                            clang.url.path(percentEncoded: false)] + clangArguments,
                inputFiles: [source, clang.url] + Self.localHeaders(in: bpfDirectory),
                outputFiles: [generated]
            ),
        ]
    }

    /// Headers in bpf/, so that editing one rebuilds the object.
    private static func localHeaders(in directory: URL) -> [URL] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path(percentEncoded: false))) ?? []
        return names.filter { $0.hasSuffix(".h") }.sorted().map { directory.appending(path: $0) }
    }

    /// The Debian / Ubuntu multiarch include directory of the build host, if present.
    private static func hostMultiarchIncludeDirectory() -> String? {
        #if arch(x86_64)
        let triple: String? = "x86_64-linux-gnu"
        #elseif arch(arm64)
        let triple: String? = "aarch64-linux-gnu"
        #else
        let triple: String? = nil
        #endif
        guard let triple else { return nil }
        let directory = "/usr/include/\(triple)"
        return FileManager.default.fileExists(atPath: directory + "/asm/types.h") ? directory : nil
    }
}
