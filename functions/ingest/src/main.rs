//! The ingest stage as its own function: parses its input, runs the ingest stage through the
//! shared harness, and returns. All logic lives in `baton` (the `shared/` crate).

fn main() -> std::process::ExitCode {
    baton::runtime::function::main(baton::pipeline::StageName::Ingest)
}
