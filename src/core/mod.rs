//! The pure core: no IO, no clock reads, no async runtime. `now` is always passed in.
pub mod model;
