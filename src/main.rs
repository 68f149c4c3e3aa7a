//! The `tollgate` binary: everything lives in the library ([`tollgate::cli`]).

/// mimalloc instead of glibc malloc: a Check allocates many small, short-lived
/// objects on several tokio worker threads, and glibc's arenas spent about a
/// fifth of the server's CPU in malloc/free, arena locks and consolidation
/// (profile in docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
