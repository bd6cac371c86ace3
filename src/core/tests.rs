//! Tests of the pure core: a simulated harness stepping through days of retries in
//! milliseconds, unit tests for each transition of docs/lifecycle.md, and property tests.

mod harness;
mod props;
mod unit;
