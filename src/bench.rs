//! `orchardd bench` (placeholder until the benchmark lands).
use crate::cli::BenchArgs;

pub async fn run(_args: BenchArgs) -> Result<(), String> {
    Err("not yet".into())
}
