//! The verify stage as its own function: its stage and the adapters it adds to the bus
//! and the store (test runners and the HTTP probe), handed to the one function entry
//! point. All logic lives in `baton` (the `shared/` crate).

fn main() -> std::process::ExitCode {
    baton::runtime::function::main::<baton::stages::Verify, baton::runtime::lambda::ports::WithTests>(
    )
}
