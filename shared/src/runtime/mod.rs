//! Runtimes: where the pipeline runs. `local` (the embedded adapters under a state
//! directory, and the dispatcher), `serve` (its HTTP server), `lambda` (the function
//! handler on AWS) and `function` (the entry point every function binary calls).

#[cfg(feature = "aws")]
pub mod function;
#[cfg(feature = "aws")]
pub mod lambda;
pub mod local;
#[cfg(feature = "serve")]
pub mod serve;
