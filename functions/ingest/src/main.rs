//! The ingest stage as its own function: its stage and the adapters it adds to the bus
//! and the store, handed to the one function entry point. All logic lives in `baton`
//! (the `shared/` crate); this binary links only what the ingest stage uses.

fn main() -> std::process::ExitCode {
    baton::runtime::function::main::<
        baton::stages::Ingest,
        baton::runtime::lambda::ports::WithRegistry,
    >()
}
