//! The test stage as its own function: its stage and the adapters it adds to the bus
//! and the store, handed to the one function entry point. All logic lives in `baton`
//! (the `shared/` crate); this binary links only what the test stage uses.

fn main() -> std::process::ExitCode {
    baton::runtime::function::main::<baton::stages::Test, baton::runtime::lambda::ports::WithTests>(
    )
}
