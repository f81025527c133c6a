//! `token-issuer`: the command line is `token_issuer::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    token_issuer::cli::run()
}
