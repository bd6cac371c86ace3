//! Serde models of Apple's `mdm/v2` requests, responses and notifications (docs/apple-api.md).
//!
//! Invariants: decoding is lenient where Apple may evolve — unknown fields are ignored, optional
//! fields are `Option` or defaulted, enums have an `Unknown` arm, counts are `i64`
//! (`totalCount` is `i32::MAX` for unlimited assets), and a malformed date becomes `None`
//! instead of failing the whole response. Only fields the daemon cannot work without
//! (e.g. a notification's `eventId`) are required.
//!
//! Layout: [`enums`] (Apple's string enums), [`common`] (shared objects and `ErrorResponse`),
//! [`config`] (Service Config and Client Config), [`reads`] (assets, assignments, users pages),
//! [`events`] (write answers and Event Status), [`requests`] (write bodies, counting and
//! splitting by Service Config limits), [`notification`] (webhook bodies), [`dates`] and
//! [`lenient`] (the lenient decoding helpers, including [`LenientVec`] and the page lists
//! [`PageRecords`], which count what they could not decode).

pub mod common;
pub mod config;
pub mod dates;
pub mod enums;
pub mod events;
pub mod lenient;
pub mod notification;
pub mod reads;
pub mod requests;
#[cfg(test)]
mod tests;

pub use common::*;
pub use config::*;
/// The original path of [`dates`].
pub use dates as apple_date;
pub use enums::*;
pub use events::*;
pub use lenient::{LenientVec, PageRecords, Undecodable, UNDECODABLE_SAMPLES};
pub use notification::*;
pub use reads::*;
pub use requests::*;
