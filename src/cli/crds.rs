//! `tollgate crds`: print the CustomResourceDefinitions generated from the
//! Rust policy types, ready for `kubectl apply -f -`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// The flags of `tollgate crds`.
#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// Prints (or writes) the CRDs; exit status 0, or 2 when writing fails.
pub fn main(args: CrdsArgs) -> ExitCode {
    let yaml = crate::policy::crd::crds_yaml();
    let written = match &args.output {
        Some(path) => std::fs::write(path, yaml.as_bytes()),
        None => std::io::stdout().lock().write_all(yaml.as_bytes()),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tollgate crds: {error}");
            ExitCode::from(2)
        }
    }
}
