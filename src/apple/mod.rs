//! Typed client for Apple's Apps and Books for Organizations API (`mdm/v2`).
//!
//! - [`model`]: serde models of every request, response and notification, plus request
//!   counting and splitting by Service Config limits.
//! - [`error`]: [`ApiError`], classifying Apple error numbers wherever they appear.
//! - [`gate`]: the pure per-token rate limiter / Retry-After / backoff / health gate.
//! - [`pagination`]: traversal of paginated reads with versionId consistency.
//! - [`client`]: [`AppleClient`], the async adapter tying them to reqwest.
//! - [`hooks`]: what the client asks of the rest of the daemon ([`SendGate`]: may it send
//!   for a token now; [`CallObserver`]: where each call is reported).
//!
//! Invariant for the whole module: a content token never appears in a log line, an error's
//! `Display`/`Debug`, or anywhere but the `Authorization` header of a request to Apple.

pub mod client;
pub mod error;
pub mod gate;
pub mod hooks;
pub mod model;
pub mod pagination;

pub use client::{
    body_cap, decode_response, AppleClient, ClientOptions, TokenHealth, LARGE_BODY_CAP,
    SMALL_BODY_CAP,
};
pub use error::{parse_retry_after, ApiError};
pub use gate::{Gate, GateConfig, Outcome as GateOutcome, Refused};
pub use hooks::{CallObserver, Observer, SendGate};
pub use model::{
    count_entities, parse_notification, split_request, Assignment, ClientConfigRequest,
    ClientConfigResponse, ErrorResponse, EventResponse, EventStatus, Limits, ManageAssetsRequest,
    ManageUsersRequest, MdmInfo, Notification, NotificationParseError, NotificationPayload,
    NotificationType, RequestKind, ResponseAsset, ResponseUser, RevokeAssetsRequest, ServiceConfig,
    SplitError, StatusResponse,
};
pub use pagination::{KeySetDigest, PageSink, StreamError, Streamed, Traversal};
