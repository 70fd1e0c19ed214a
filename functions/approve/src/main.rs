//! The approve stage as its own function: parses its input, runs the approve stage through the
//! shared harness, and returns. All logic lives in `baton` (the `shared/` crate).

fn main() -> std::process::ExitCode {
    baton::runtime::function::main(baton::pipeline::StageName::Approve)
}
