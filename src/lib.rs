//! vpp-reconciler: makes sure every Apple Apps and Books (VPP `mdm/v2`) event gets a final,
//! recorded outcome, and re-syncs the MDM's view where an outcome was learned the hard way.
//!
//! Layout: a pure [`core`] (event state machine, scheduling, backoff, sync coalescing) driven
//! by one [`executor`] loop, surrounded by thin adapters: [`apple`] (client), [`store`]
//! (SQLite by default, PostgreSQL for several instances, which share the tokens by
//! [`cluster`] leases), [`webhook`] (notifications in), [`api`] (local HTTP API), [`push`]
//! (the feed to the MDM), [`cli`], and the Apple API simulator [`sim`].

pub mod api;
pub mod apple;
pub mod authority;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod core;
pub mod daemon;
pub mod demo;
pub mod effects;
pub mod executor;
pub mod files;
pub mod fuzzing;
pub mod metrics;
pub mod mirror;
pub mod push;
pub mod schedule;
pub mod scheduler;
pub mod secret;
pub mod serve;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tokens;
pub mod webhook;
