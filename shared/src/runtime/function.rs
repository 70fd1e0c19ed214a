//! The entry point every function crate calls: `main::<Stage, Adapters>()`. It serves the
//! Lambda Runtime API ([`crate::runtime::lambda::handler`]) with that stage and those
//! adapters. Each function names its stage and adapters in its `main.rs`, so its binary
//! links only what that stage uses: no embedded adapters, no other stage's clients.
//!
//! Outside Lambda (no `AWS_LAMBDA_RUNTIME_API`) a function binary says so and exits 2;
//! stages run locally through `baton` (`demo`, `serve`, `retry`) on the same code.

use crate::runtime::lambda::handler::Function;
use crate::runtime::lambda::ports::Extra;

/// `main` of a function binary for stage `S` with the adapters `X`: serves invocations
/// from the Lambda Runtime API named by `AWS_LAMBDA_RUNTIME_API`.
pub fn main<S: Function<X>, X: Extra>() -> std::process::ExitCode {
    crate::adapters::sandbox::protect_this_process();
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        let name = std::env::args()
            .next()
            .and_then(|a| {
                std::path::Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| format!("the {} function", S::SPEC.name));
        eprintln!(
            "error: {name} is an AWS Lambda function for the {} stage: it serves the Lambda Runtime API named by AWS_LAMBDA_RUNTIME_API, which is not set. Deploy it with the SAM stack (docs/aws.md), or run the pipeline locally with `baton demo`, `baton serve` or `baton retry`.",
            S::SPEC.name
        );
        return std::process::ExitCode::from(2);
    }
    block_on(crate::runtime::lambda::handler::run::<S, X>())
}

/// Runs a binary's work on a current-thread runtime: success exits 0; an error is
/// printed (`error: …`) and exits 1.
pub fn block_on<E: std::fmt::Display>(
    work: impl std::future::Future<Output = std::result::Result<(), E>>,
) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
