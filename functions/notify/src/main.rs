//! The notify stage as its own function: its stage and the adapters it adds to the bus
//! and the store, handed to the one function entry point. All logic lives in `baton`
//! (the `shared/` crate); this binary links only what the notify stage uses.

fn main() -> std::process::ExitCode {
    baton::runtime::function::main::<
        baton::stages::Notify,
        baton::runtime::lambda::ports::WithNotifier,
    >()
}
