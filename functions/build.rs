//! The build script every function crate shares (`build = "../build.rs"`).
//!
//! Links the function binaries as position-dependent executables (`-no-pie`) on Linux.
//! A position-independent executable must be relocated by the dynamic loader at every
//! start: for a function binary that is about 45,000 relocations and a copy-on-write
//! page fault for every page of relocated data, which took most of the gap between a
//! Baton function's cold start and a minimal `lambda_runtime` function's (see docs/performance.md,
//! "Cold start"). The code is still compiled position-independent; only the final link
//! differs, and the kernel still randomises the stack, heap and shared libraries. What
//! is given up is a random load address for the executable itself, as with Go's default
//! build for Lambda.
//!
//! Build with `BATON_FUNCTION_PIE=1` to keep position-independent function binaries.

fn main() {
    println!("cargo::rerun-if-env-changed=BATON_FUNCTION_PIE");
    println!("cargo::rerun-if-changed=../build.rs");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let keep_pie = std::env::var("BATON_FUNCTION_PIE").is_ok_and(|v| !v.is_empty() && v != "0");
    if linux && !keep_pie {
        println!("cargo::rustc-link-arg-bins=-no-pie");
    }
}
