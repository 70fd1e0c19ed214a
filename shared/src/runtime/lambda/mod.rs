//! The Lambda side of the functions: the handler that routes each invocation to its
//! stage, the AWS ports, and the test function for the `lambda` test runner.

pub mod handler;
pub mod ports;
pub mod test_function;
