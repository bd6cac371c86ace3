//! The two organisations and their workload: a seeded, reproducible list of write requests,
//! some of them planted to fail in known ways.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::*;

/// One simulated Apple location and the token that reaches it.
pub(super) struct Site {
    pub(super) token: &'static str,
    pub(super) org: &'static str,
    pub(super) serial_prefix: &'static str,
    /// An app with plenty of licences.
    pub(super) app: (&'static str, i64),
    /// An app with few licences (runs out: 9709).
    pub(super) few: (&'static str, i64),
    /// A book (user-only, not revocable).
    pub(super) book: (&'static str, i64),
}

pub(super) const SITES: [Site; 2] = [
    Site {
        token: "acme",
        org: "Acme Corp",
        serial_prefix: "C02A",
        app: ("361304891", 150),
        few: ("408709785", 5),
        book: ("1507713370", 30),
    },
    Site {
        token: "beta",
        org: "Beta School District",
        serial_prefix: "DMPB",
        app: ("361309726", 150),
        few: ("497799835", 4),
        book: ("1444383602", 20),
    },
];

pub(super) const USERS_PER_SITE: usize = 40;

pub(super) fn location_body(site: &Site) -> Value {
    let users: Vec<Value> = (1..=USERS_PER_SITE)
        .map(|i| json!({"clientUserId": format!("u{i:02}"), "email": format!("u{i:02}@{}.example.com", site.token)}))
        .collect();
    json!({
        "name": site.org,
        // Small pages so syncs paginate as they would on a real location.
        "pageSize": 25,
        "users": users,
        "assets": [
            {"adamId": site.app.0, "pricingParam": "STDQ", "productType": "App", "total": site.app.1},
            {"adamId": site.few.0, "pricingParam": "STDQ", "productType": "App", "total": site.few.1},
            {"adamId": site.book.0, "pricingParam": "STDQ", "productType": "Book", "total": site.book.1},
        ],
    })
}

/// One request the demo's "MDM" submits through the daemon.
#[derive(Debug, Clone)]
pub struct Request {
    pub token: usize,
    /// The submit route's kind: associate, disassociate, revoke, create-users, ...
    pub kind: &'static str,
    pub body: Value,
    pub what: String,
    /// The Apple error number this request is built to cause.
    pub expect_error: Option<i64>,
    /// Processed slowly by Apple, so the daemon resubmits it.
    pub slow: bool,
}

pub(super) fn assets(adam: &str) -> Value {
    json!([{"adamId": adam, "pricingParam": "STDQ"}])
}

pub(super) fn req(token: usize, kind: &'static str, body: Value, what: String) -> Request {
    Request {
        token,
        kind,
        body,
        what,
        expect_error: None,
        slow: false,
    }
}

pub(super) fn serials(rng: &mut SmallRng, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| format!("{prefix}{:08X}", rng.gen::<u32>()))
        .collect()
}

/// One site's requests, in the order an MDM would send them: `fill` extra associations
/// between the first ones and the follow-ups that depend on them.
pub(super) fn site_requests(
    t: usize,
    site: &Site,
    fill: usize,
    rng: &mut SmallRng,
) -> Vec<Request> {
    let app = site.app.0;
    let pool: Vec<String> = (1..=36).map(|i| format!("u{i:02}")).collect();
    let mut v = Vec::new();

    let first = serials(rng, site.serial_prefix, 4);
    v.push(req(
        t,
        "associate",
        json!({"assets": assets(app), "serialNumbers": first}),
        format!("app {app} -> 4 devices"),
    ));
    let group: Vec<String> = pool.choose_multiple(rng, 6).cloned().collect();
    v.push(req(
        t,
        "associate",
        json!({"assets": assets(app), "clientUserIds": group}),
        format!("app {app} -> 6 users"),
    ));
    let readers: Vec<String> = pool.choose_multiple(rng, 5).cloned().collect();
    v.push(req(
        t,
        "associate",
        json!({"assets": assets(site.book.0), "clientUserIds": readers}),
        format!("book {} -> 5 users", site.book.0),
    ));
    v.push(req(
        t,
        "associate",
        json!({"assets": assets(app), "clientUserIds": ["u37", "u38", "u39", "u40"]}),
        format!("app {app} -> u37..u40"),
    ));
    for _ in 0..fill {
        if rng.gen_bool(0.7) {
            let n = rng.gen_range(2..=6);
            let s = serials(rng, site.serial_prefix, n);
            v.push(req(
                t,
                "associate",
                json!({"assets": assets(app), "serialNumbers": s}),
                format!("app {app} -> {n} devices"),
            ));
        } else {
            let n = rng.gen_range(2..=4);
            let users: Vec<String> = pool.choose_multiple(rng, n).cloned().collect();
            v.push(req(
                t,
                "associate",
                json!({"assets": assets(app), "clientUserIds": users}),
                format!("app {app} -> {n} users"),
            ));
        }
    }
    let (few, total) = site.few;
    let n = total as usize + 3;
    let mut over = req(
        t,
        "associate",
        json!({"assets": assets(few), "serialNumbers": serials(rng, site.serial_prefix, n)}),
        format!("app {few} ({total} licences) -> {n} devices"),
    );
    over.expect_error = Some(9709);
    v.push(over);
    let known = pool.choose(rng).cloned().unwrap_or_else(|| "u01".into());
    let ghost = format!("ghost-{:03}", rng.gen_range(0..1000));
    let mut unknown = req(
        t,
        "associate",
        json!({"assets": assets(app), "clientUserIds": [ghost, known]}),
        format!("app {app} -> {known} and unknown {ghost}"),
    );
    unknown.expect_error = Some(9609);
    v.push(unknown);
    let new_users: Vec<Value> = (1..=3)
        .map(|i| json!({"clientUserId": format!("n{i:02}"), "email": format!("n{i:02}@{}.example.com", site.token)}))
        .collect();
    v.push(req(
        t,
        "create-users",
        json!({"users": new_users}),
        "create users n01..n03".into(),
    ));
    let existing = pool.choose(rng).cloned().unwrap_or_else(|| "u05".into());
    let mut dup = req(
        t,
        "create-users",
        json!({"users": [
            {"clientUserId": existing, "email": format!("{existing}@{}.example.com", site.token)},
            {"clientUserId": "n04", "email": format!("n04@{}.example.com", site.token)},
        ]}),
        format!("create n04 and existing {existing}"),
    );
    dup.expect_error = Some(9716);
    v.push(dup);
    v.push(req(
        t,
        "associate",
        json!({"assets": assets(app), "clientUserIds": ["n01", "n02", "n03"]}),
        format!("app {app} -> new users n01..n03"),
    ));
    let renamed = pool.choose(rng).cloned().unwrap_or_else(|| "u07".into());
    v.push(req(
        t,
        "update-users",
        json!({"users": [{"clientUserId": renamed, "email": format!("{renamed}.new@{}.example.com", site.token)}]}),
        format!("update email of {renamed}"),
    ));
    v.push(req(
        t,
        "disassociate",
        json!({"assets": assets(app), "serialNumbers": &first[..2]}),
        format!("app {app} off 2 devices"),
    ));
    v.push(req(
        t,
        "disassociate",
        json!({"assets": assets(app), "clientUserIds": [group[0]]}),
        format!("app {app} off {}", group[0]),
    ));
    v.push(req(
        t,
        "revoke",
        json!({"clientUserIds": [group[1]]}),
        format!("revoke everything of {}", group[1]),
    ));
    v.push(req(
        t,
        "retire-users",
        json!({"users": [{"clientUserId": "u39"}, {"clientUserId": "u40"}]}),
        "retire u39, u40".into(),
    ));
    v
}

/// The whole workload for `events` events: both sites interleaved, the slow one last (the
/// simulator processes a location's events in order, so it would hold up anything after it).
pub fn workload(seed: u64, events: usize) -> Vec<Request> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_de70);
    let fill = events.saturating_sub(CORE_EVENTS);
    let a = site_requests(0, &SITES[0], fill.div_ceil(2), &mut rng);
    let b = site_requests(1, &SITES[1], fill / 2, &mut rng);
    let mut out = Vec::with_capacity(a.len() + b.len() + 1);
    let mut a = a.into_iter();
    let mut b = b.into_iter();
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
    let s = serials(&mut rng, SITES[1].serial_prefix, 2);
    let mut slow = req(
        1,
        "associate",
        json!({"assets": assets(SITES[1].app.0), "serialNumbers": s}),
        format!("app {} -> 2 devices, Apple slow", SITES[1].app.0),
    );
    slow.slow = true;
    out.push(slow);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_is_reproducible_and_sized() {
        let a = workload(1, DEFAULT_EVENTS);
        let b = workload(1, DEFAULT_EVENTS);
        assert_eq!(a.len(), DEFAULT_EVENTS);
        assert_eq!(
            a.iter().map(|r| r.body.clone()).collect::<Vec<_>>(),
            b.iter().map(|r| r.body.clone()).collect::<Vec<_>>()
        );
        assert_eq!(workload(2, CORE_EVENTS).len(), CORE_EVENTS);
        assert!(a.last().is_some_and(|r| r.slow));
        assert!(a.iter().any(|r| r.token == 0) && a.iter().any(|r| r.token == 1));
    }
}
