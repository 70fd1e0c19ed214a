//! The smallest `lambda_runtime` function (echoes its payload): the baseline the
//! cold-start benchmark (`cargo bench -p baton-cli --bench cold_start`) compares every
//! Baton function with.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|e: LambdaEvent<Value>| async move {
        Ok::<Value, Error>(e.payload)
    }))
    .await
}
