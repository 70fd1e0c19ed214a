//! The gate stage as its own function: parses its input, runs the gate stage through the
//! shared harness, and returns. All logic lives in `baton` (the `shared/` crate).

fn main() -> std::process::ExitCode {
    baton::runtime::function::main(baton::pipeline::StageName::Gate)
}
