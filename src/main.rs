//! The `promshard` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    promshard::cli::main()
}
