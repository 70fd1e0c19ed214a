//! The test function for the `lambda` test runner; see `baton::runtime::lambda::test_function`.

fn main() -> std::process::ExitCode {
    baton::runtime::lambda::test_function::main()
}
