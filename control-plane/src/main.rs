fn main() -> std::process::ExitCode {
    meshd::cli::main()
}
