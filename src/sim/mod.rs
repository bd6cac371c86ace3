//! The Apple API simulator (`vpp-reconciler sim`): an independent model of Apple's
//! Apps and Books for Organizations API (`mdm/v2`) built from `docs/apple-api.md`, for tests,
//! benchmarks and the demo. It deliberately shares no types with the daemon's client
//! (`src/apple/`), so a client mistake is not mirrored here.
//!
//! # Modeled
//! - Locations (one per sToken, numeric-string `uId`) with assets and licence counts, users,
//!   assignments, events, Client Config. sToken = base64 of `{token, expDate, orgName}` and the
//!   whole string is the Bearer value [C START, E ABCLI].
//! - Routes under `/mdm/v2/`: `service/config` (no auth, not rate limited), `client/config`
//!   GET/POST, `assets`, `assignments`, `users`, `assets/associate|disassociate|revoke`,
//!   `users/create|update|retire`, and Event Status at `status/{eventId}` and also
//!   `status?eventId=` (docs/apple-api.md#event-status writes the query form; both are accepted).
//! - Checks, in order: unknown path 404 (9602 body); method 9726/405; (Service Config answered here);
//!   Authorization 9722/401; unknown token 9622/401 [E]; the request is then counted for the
//!   location; token state 9625 (revoked) / 9621 (expired, by fault or past `expDate`);
//!   running Retry-After window 9729/503; rate limit 9646/429; 5xx fault; Content-Type of POSTs
//!   9727/415; body 9602; validation; the endpoint. Apple documents none of this order [I].
//! - Error bodies `{"errorNumber", "errorMessage", "errorInfo"?}` with Apple's statuses [C ERR].
//!   With the `errorsWithHttp200` fault, 4xx errors (not 429) are sent with HTTP 200 [E FLEET].
//! - Writes are validated synchronously (9700–9707, 9714, 9715, 9717–9720, 9602), answered with
//!   `EventResponse`, and processed after `processingDelay` by one FIFO worker per location.
//!   See [`process`] and [`state::Location::process`].
//! - Notifications: see [`notify`].
//! - Rate limit: see [`rate`]. `maxRequestPerSecond` and every other limit come from the
//!   Service Config limits (Apple's example values [C SVC]), changeable with `PUT /_sim/limits`.
//!
//! # Control routes (`/_sim/`, errors `{"error"}` with 400/404)
//! - `POST /_sim/locations` `{name?, expDate?, pageSize? (1000), assets: [{adamId,
//!   pricingParam? (STDQ), productType? (App), total | unlimited: true, deviceAssignable?,
//!   revocable? (both default true, false for books), supportedPlatforms?}], users:
//!   [{clientUserId, email?, managedAppleId?, status? (Registered|Associated)}]}` ->
//!   `{"uId", "sToken"}`.
//! - `PUT /_sim/faults` (see [`faults`]; answers the faults in force), `PUT /_sim/notify`
//!   `{uId, url, authToken}`, `PUT /_sim/limits` `{"<Service Config limit key>": int, ...}`
//!   (answers all limits), `GET /_sim/stats`, `GET /_sim/truth/{uId}`.
//! - Extras: `POST /_sim/asset-count` `{uId, adamId, pricingParam?, countDelta}` (licences
//!   bought/refunded; ASSET_COUNT notification) and `POST /_sim/associate-user` `{uId,
//!   clientUserId}` (invitation accepted; USER_ASSOCIATED notification).
//!
//! # Choices where Apple is silent
//! - **Removed assignments do not appear at all in `sinceVersionId` responses** [open Q4]: a
//!   client must run a full assignments sync to see removals. Retired users do appear
//!   (status Retired) [I].
//! - `versionId` changes for each data set touched by every processed write (asset events:
//!   assets + assignments; user create/update: users; retire: users + assignments + assets),
//!   even when nothing actually changed. Each record keeps the modification counter of its last
//!   change; a versionId maps to the counter when it was issued; `sinceVersionId` returns the
//!   records with a larger counter. versionIds never expire; unknown ones -> 9721 [C ERR].
//! - `versionChurn` fault: after every page served the data set gets a new versionId with no
//!   data change, so clients that abort on a versionId change never finish.
//! - Page size per location (`pageSize`, default 1000); `totalPages` is at least 1, so page 0 of
//!   an empty result is valid; pageIndex < 0 or >= totalPages -> 9650 [C PAG]. Order is stable:
//!   assets in creation order, assignments by (adamId, pricingParam, serials before users, id),
//!   users in creation order (retired entries stay, a clientUserId can repeat) [C MUSERS].
//! - Unlimited assets: `totalCount` 2147483647 and `availableCount` 2147483647 − assigned [I];
//!   with `unlimited=true` they go to `unlimitedAssets` on the same page sequence.
//! - Associate: per asset × (serials, then users). Unknown clientUserId (no registered,
//!   non-retired user) -> 9609; an existing assignment succeeds without using a licence; an
//!   asset the location does not own or that ran out -> 9709. Disassociating a missing
//!   assignment succeeds (9609 for unknown users). FAILED events keep partial completion.
//! - Revoke: Apple's body has only `clientUserIds`/`serialNumbers` and removes all revocable
//!   assets of those targets [C]; an optional `assets` list (simulator extension) narrows it.
//!   numRequested/numCompleted count targets, not assignments [I]. Disassociate or revoke of a
//!   non-revocable asset -> 9706 [I].
//! - Create user with an existing non-retired clientUserId -> 9716 async [C]; update/retire of
//!   an unknown one -> 9609 [I]. Retire removes the user's assignments [C MUSERS].
//! - A missing `pricingParam` in a request asset means STDQ [I]. Emails are checked loosely [I].
//! - POST client/config: types must be known (9602); URL and token both or neither (9710),
//!   length (9711), HTTPS — or HTTP to a loopback host, for tests (9712); mdmInfo fields
//!   (9723/9724/9725/9713); a TEST_NOTIFICATION is delivered (one attempt) and a failure
//!   answers 9728 [I]. Empty strings for URL and token clear them. New locations subscribe
//!   to all notification types; `notificationTypes` replaces the set [C CCREQ].
//! - Requests with a known token are counted under their Service Config url key name
//!   (`getAssets`, `eventStatus`, `clientConfig`, …) whatever their outcome; Service Config
//!   calls are not counted.
//! - Get Assignments filters combine with AND (an assignment has a user or a serial number, so
//!   `clientUserId` and `serialNumber` together match nothing); `excludeInactiveUsers` drops
//!   assignments of users that are not active (none exist, as retiring removes them);
//!   `includeUserState` adds `userStatus` and `idHash` to user assignments.
//! - `GET assets` ignores `sinceVersionId` (unsupported there [C PAG]) and always answers the
//!   full, filtered list.
//! - The Authorization scheme must be exactly `Bearer ` (case-sensitive, one space); anything
//!   else is 9722 [I].
//! - Events are kept for the simulator's lifetime: 9708 means the eventId was never issued to
//!   this location [open Q3].
//! - Control routes (`/_sim/…`) are not rate limited nor faulted. All randomness comes from
//!   `--seed`: one seeded RNG creates locations (uId, sToken, their key); everything issued
//!   later (eventIds, versionIds, inviteCodes, notificationIds) and every fault decision (5xx,
//!   lost, duplicated, notification order) is derived from the seed or that key and what it is
//!   about ([`state::keyed`]), never drawn in arrival order. So a client that sends the same
//!   writes in the same order per location sees the same ids, outcomes and faults in every
//!   run, however its reads (polls, syncs) interleave; only those reads' own 5xx vary with how
//!   many of them there are.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post, put};
use axum::Router;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::Semaphore;

mod api;
mod control;
pub mod errors;
pub mod faults;
pub mod notify;
pub mod process;
pub mod rate;
pub mod state;

/// Options for [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct SimOptions {
    pub seed: u64,
}

/// What every handler shares.
pub struct Shared {
    pub(crate) state: Mutex<state::SimState>,
    pub(crate) http: reqwest::Client,
    /// Concurrent notification deliveries.
    pub(crate) slots: Arc<Semaphore>,
    /// Notifications spawned and not yet finished.
    pub(crate) queued: AtomicUsize,
    pub(crate) local_addr: SocketAddr,
}

/// Concurrent notification deliveries at most.
const DELIVERY_SLOTS: usize = 32;
/// Largest request body accepted (a big associate request is a few hundred kB).
const MAX_BODY: usize = 16 << 20;

/// Serves the simulator on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: SimOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local_addr = listener.local_addr()?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(DELIVERY_SLOTS)
        .build()
        .map_err(std::io::Error::other)?;
    let shared = Arc::new(Shared {
        state: Mutex::new(state::SimState::with_seed(
            SmallRng::seed_from_u64(opts.seed),
            opts.seed,
        )),
        http,
        slots: Arc::new(Semaphore::new(DELIVERY_SLOTS)),
        queued: AtomicUsize::new(0),
        local_addr,
    });
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/mdm/v2/{*rest}", any(api::entry))
        .route("/_sim/locations", post(control::create_location))
        .route("/_sim/faults", put(control::put_faults))
        .route("/_sim/notify", put(control::put_notify))
        .route("/_sim/limits", put(control::put_limits))
        .route("/_sim/stats", get(control::stats))
        .route("/_sim/truth/{uid}", get(control::truth))
        .route("/_sim/asset-count", post(control::asset_count))
        .route("/_sim/associate-user", post(control::associate_user))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}
