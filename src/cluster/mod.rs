//! Several instances on one PostgreSQL database (docs/architecture.md, "Several
//! instances"): every instance serves the webhook and the local API; each token is worked by
//! the one instance that holds its lease.

pub mod held;
pub mod keeper;
pub mod lease;
