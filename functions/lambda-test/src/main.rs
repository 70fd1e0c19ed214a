//! The test function for the `lambda` test runner; see `baton::aws::test_function`.

fn main() -> std::process::ExitCode {
    baton::aws::test_function::main()
}
