//! The `meshd` binary; everything it does lives in the library (`meshd::cli`).

fn main() -> std::process::ExitCode {
    meshd::cli::main()
}
