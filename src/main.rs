//! The `tollgate` binary: everything lives in the library ([`tollgate::cli`]).

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
