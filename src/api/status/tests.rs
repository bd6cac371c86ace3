use super::chart::chart_svg;
use super::format::*;
use super::*;
use crate::store::status::{chart_start, RecentFailure, StateCount, CHART_HOURS};
use crate::store::status::{HourBucket, StatusSnapshot, HOUR_MS};
use crate::store::{SyncView, TokenView};

const NOW: Timestamp = Timestamp(1_795_000_000_000);

fn hours(f: impl Fn(usize) -> (u64, u64, u64)) -> Vec<HourBucket> {
    let start = chart_start(NOW);
    (0..CHART_HOURS)
        .map(|i| {
            let (settled, polls, sync_pages) = f(i);
            HourBucket {
                start: Timestamp(start.0 + i as i64 * HOUR_MS),
                settled,
                polls,
                sync_pages,
            }
        })
        .collect()
}

fn token(name: &str) -> TokenView {
    TokenView {
        name: name.into(),
        u_id: None,
        org_name: Some("Org & Co".into()),
        location: None,
        expires_at: Some(Timestamp(NOW.0 + 10 * 86_400_000 + 1000)),
        health: "healthy".into(),
        health_reason: None,
        health_since: Some(Timestamp(NOW.0 - 5 * 60_000)),
        mdm_conflict: None,
        pending: 2,
        syncing: 1,
        last_syncs: vec![],
    }
}

fn snapshot() -> StatusSnapshot {
    let mut bad = token("<script>alert(1)</script>");
    bad.health = "unhealthy".into();
    bad.health_reason = Some("Apple said \"9622\" & <gone>".into());
    bad.mdm_conflict = Some("mdmInfo id \"x\" <other>".into());
    bad.expires_at = Some(Timestamp(NOW.0 - 2 * 86_400_000));
    StatusSnapshot {
        tokens: vec![token("acme"), bad],
        events: vec![
            StateCount {
                state: "pending".into(),
                outcome: None,
                count: 7,
            },
            StateCount {
                state: "syncing".into(),
                outcome: Some("failed".into()),
                count: 3,
            },
            StateCount {
                state: "settled".into(),
                outcome: Some("complete".into()),
                count: 40,
            },
        ],
        since: chart_start(NOW),
        failures: vec![RecentFailure {
            event_id: "ev-1".into(),
            token: Some("acme".into()),
            at: Timestamp(NOW.0 - 90_000),
            source: "notification".into(),
            error_number: 9609,
            error_message: "Unknown user <img src=x onerror=alert(1)>".into(),
        }],
        syncs: vec![SyncView {
            id: 4,
            token: "acme".into(),
            kind: "assets".into(),
            full: true,
            cause: None,
            started_at: Timestamp(NOW.0 - 3 * HOUR_MS),
            finished_at: Some(Timestamp(NOW.0 - 3 * HOUR_MS + 4_200)),
            duration_ms: Some(4_200),
            pages: 3,
            records: 250,
            result: "failed".into(),
            error: Some("9721 <version>".into()),
        }],
        hours: hours(|i| (i as u64, 2 * i as u64, 1)),
        push: Some(crate::store::PushStatusView {
            last_delivered_seq: 40,
            last_seq: 42,
            backlog: 2,
            in_flight: None,
            last_error: Some("HTTP 503 <from the MDM>".into()),
            last_error_at: Some(Timestamp(NOW.0 - 60_000)),
            last_success_at: Some(Timestamp(NOW.0 - 120_000)),
            replays: 0,
            parked: 0,
            recent_parked: vec![],
        }),
    }
}

#[test]
fn escape_html_escapes_the_five_specials_and_keeps_the_rest() {
    assert_eq!(
        escape_html(r#"<a href="x">Tom & 'Jerry'</a>"#),
        "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
    );
    assert_eq!(escape_html("plain ünïcode 名前"), "plain ünïcode 名前");
    assert_eq!(escape_html(""), "");
    // Already escaped text is escaped again, not trusted.
    assert_eq!(escape_html("&lt;"), "&amp;lt;");
}

#[test]
fn every_value_from_data_is_escaped() {
    let page = render(&snapshot(), NOW, None);
    for raw in [
        "<script>",
        "<img src=x",
        "<gone>",
        "<other>",
        "<version>",
        "Org & Co",
    ] {
        assert!(!page.contains(raw), "{raw:?} unescaped in the page");
    }
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("Unknown user &lt;img src=x onerror=alert(1)&gt;"));
    assert!(page.contains("Org &amp; Co"));
    assert!(page.contains("Apple said &quot;9622&quot; &amp; &lt;gone&gt;"));
    // No script of our own either.
    assert!(!page.to_lowercase().contains("<script"));
}

#[test]
fn page_shows_tokens_events_failures_syncs_and_refreshes() {
    let page = render(&snapshot(), NOW, None);
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"30\">"));
    assert!(page.contains("<td class=\"name\">acme</td>"));
    // Expiry as a date and days left; the expired token says so.
    let expiry = Timestamp(NOW.0 + 10 * 86_400_000 + 1000)
        .to_datetime()
        .format("%Y-%m-%d")
        .to_string();
    assert!(page.contains(&format!(
        "{expiry} <span class=\"warn\">(10 days left)</span>"
    )));
    assert!(page.contains("(expired 2d ago)"));
    assert!(page.contains("since <time"), "health since, relative");
    assert!(page.contains(">5m ago</time>"));
    // The events table: a row per state, a total per row.
    assert!(page.contains("<table id=\"events\">"));
    assert!(page.contains("<td class=\"num\">7</td>"));
    assert!(page.contains("<td class=\"num bad\">3</td>"));
    assert!(page.contains("<td class=\"num total\">40</td>"));
    // Failures with Apple's number, the event and the token, relative time.
    assert!(page.contains("<table id=\"failures\">"));
    assert!(page.contains("<td class=\"num bad\">9609</td>"));
    assert!(page.contains("<code>ev-1</code>"));
    assert!(page.contains(">1m ago</time>"));
    // Sync runs.
    assert!(page.contains("<table id=\"syncs\">"));
    assert!(page.contains("<td class=\"num\">250</td>"));
    assert!(page.contains("<td class=\"num\">4.2 s</td>"));
    assert!(page.contains(">3h ago</time>"));
    assert!(page.contains("1 need attention") || page.contains("1 needs attention"));
}

#[test]
fn chart_is_inline_svg_with_a_bar_per_hour_and_panel() {
    let page = render(&snapshot(), NOW, None);
    assert!(page.contains("<svg id=\"chart\""));
    assert_eq!(page.matches("<rect class=\"settled\"").count(), CHART_HOURS);
    assert_eq!(page.matches("<rect class=\"calls\"").count(), CHART_HOURS);
    // The tallest bar fills its panel; its scale label shows the maximum.
    let svg = chart_svg(&snapshot().hours);
    assert!(svg.contains(">23</text>"), "settled max 23");
    assert!(svg.contains(">47</text>"), "calls max 2*23+1");
    assert!(svg.contains("height=\"80.0\""));
    assert!(page.contains("<figcaption>"));
    assert!(page.contains("Event Status polls plus pages"));
    assert!(svg.contains("47 Apple calls (46 Event Status polls, 1 sync pages)</title>"));
}

#[test]
fn empty_store_renders_a_complete_page() {
    let empty = StatusSnapshot {
        since: chart_start(NOW),
        hours: hours(|_| (0, 0, 0)),
        ..Default::default()
    };
    let page = render(&empty, NOW, None);
    assert!(page.ends_with("</html>\n"));
    assert!(page.contains("No tokens configured."));
    assert!(page.contains("No failures recorded."));
    assert!(page.contains("No sync runs yet."));
    assert!(
        page.contains("<table id=\"events\">"),
        "the table, with zeros"
    );
    assert!(page.contains("<svg id=\"chart\""));
    assert_eq!(page.matches("none in the last 24 hours").count(), 2);
    assert!(!page.contains("NaN") && !page.contains("=\"inf"));
}

#[test]
fn push_outbox_shows_backlog_and_escapes_the_last_error() {
    let page = render(&snapshot(), NOW, None);
    assert!(page.contains("Push to the MDM"), "{page}");
    assert!(page.contains("2 changes"));
    assert!(page.contains("HTTP 503 &lt;from the MDM&gt;"));
    let mut s = snapshot();
    s.push = None;
    assert!(!render(&s, NOW, None).contains("Push to the MDM"));
}

fn cluster_view() -> ClusterView {
    use crate::cluster::lease::Lease;
    use crate::store::LeaseSnapshot;
    let lease = |token: &str, holder: &str| Lease {
        token: token.into(),
        holder: holder.into(),
        expires_at: Timestamp(NOW.0 + 10_000),
    };
    let snapshot = LeaseSnapshot {
        now: NOW,
        live: ["i-1".to_string(), "<i>2</i>".to_string()].into(),
        leases: vec![
            lease("acme", "i-1"),
            lease("<script>alert(1)</script>", "<i>2</i>"),
        ],
    };
    let seen = vec![
        ("i-1".to_string(), Timestamp(NOW.0 - 2_000)),
        ("<i>2</i>".to_string(), Timestamp(NOW.0 - 3_000)),
        ("old".to_string(), Timestamp(NOW.0 - 3_600_000)),
    ];
    ClusterView::new(&snapshot, &seen)
}

#[test]
fn instances_and_holders_show_only_with_a_cluster_and_are_escaped() {
    let plain = render(&snapshot(), NOW, None);
    assert!(!plain.contains("Instances"), "no cluster, no section");
    assert!(!plain.contains("<th>holder</th>"));

    let view = cluster_view();
    let c = Cluster {
        view: &view,
        me: Some("i-1"),
    };
    let page = render(&snapshot(), NOW, Some(c));
    assert!(page.contains("<h2>Instances</h2>"), "{page}");
    assert!(page.contains("<table id=\"instances\">"));
    assert!(page
        .contains("<td class=\"name\">i-1 <span class=\"badge muted\">this instance</span></td>"));
    assert!(
        page.contains(">2s ago</time>"),
        "last seen on the database's clock"
    );
    assert!(
        page.contains("<span class=\"badge bad\">not live</span>"),
        "old"
    );
    assert!(page.contains("2 of 3 live"));
    // Every id and token name escaped, in both tables.
    assert!(!page.contains("<i>2</i>"), "{page}");
    assert!(page.contains("&lt;i&gt;2&lt;/i&gt;"));
    assert!(page.contains("<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>"));
    assert!(!page.to_lowercase().contains("<script"));
    // The tokens table gains a holder column.
    assert!(page.contains("<th>holder</th>"));
    assert!(page.contains(
        "<td>i-1 <span class=\"badge muted\">this instance</span> <small class=\"muted\">until"
    ));
    assert!(page.contains(">in 10s</time>"));

    // Lease rows without this daemon in a cluster: holders shown, nobody is "this".
    let page = render(
        &snapshot(),
        NOW,
        Some(Cluster {
            view: &view,
            me: None,
        }),
    );
    assert!(page.contains("<h2>Instances</h2>"));
    assert!(!page.contains("this instance"));
    // In a cluster with no heartbeat yet: the section says so.
    let empty = ClusterView::default();
    let page = render(
        &snapshot(),
        NOW,
        Some(Cluster {
            view: &empty,
            me: Some("i-1"),
        }),
    );
    assert!(page.contains("No instance has sent a heartbeat yet."));
    assert!(
        page.contains("<span class=\"muted\">none</span></td></tr>"),
        "no holder"
    );
}

#[test]
fn relative_times_and_durations() {
    assert_eq!(span(45_000), "45s");
    assert_eq!(span(12 * 60_000), "12m");
    assert_eq!(span(3 * HOUR_MS + 5 * 60_000), "3h 5m");
    assert_eq!(span(2 * HOUR_MS), "2h");
    assert_eq!(span(4 * 86_400_000 + 2 * HOUR_MS), "4d 2h");
    assert!(when(Timestamp(NOW.0 + 2 * HOUR_MS), NOW).contains(">in 2h</time>"));
    assert!(when(NOW, NOW).contains(">just now</time>"));
    assert_eq!(duration(850), "850 ms");
    assert_eq!(duration(4_200), "4.2 s");
    assert_eq!(duration(190_000), "3m");
}
