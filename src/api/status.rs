//! `GET /`: the status page for people (design §5 and §10). Server-rendered HTML with inline
//! CSS and an inline SVG chart; no JavaScript at all, refreshed by `<meta http-equiv=refresh>`.
//!
//! The handler reads one [`StatusSnapshot`] from the store and hands it to [`render`], a pure
//! function of the snapshot and `now` (every time shown is relative to that `now`), so the
//! page is unit-tested without a daemon. Among several instances (or whenever the lease
//! tables hold rows) the handler also reads a [`ClusterView`], from which [`render`] adds an
//! "Instances" section and a holder column to the tokens table (their times relative to the
//! database's clock). Every value that comes from data (token names, instance ids, Apple's
//! error messages, sync errors, ...) goes through [`escape_html`].
//!
//! Access: the page needs the API token like `/v1` (see [`super::router`]), either as
//! `Authorization: Bearer` or as the password of HTTP Basic (any user name): a 401 here carries
//! `WWW-Authenticate: Basic`, so a browser prompts for it. Only this read-only page takes Basic
//! (a browser replays Basic credentials on cross-site requests, which must never authorise a
//! write), and the read-only token is accepted too. There is deliberately no `?token=`
//! alternative: a query string ends up in browser history, proxy logs and the page's own
//! refresh URL.

use std::collections::HashSet;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{ApiState, HttpError};
use crate::cluster::ClusterView;
use crate::core::{Outcome, State as EventState};
use crate::store::status::{HourBucket, StatusSnapshot, HOUR_MS};
use crate::time::Timestamp;

/// Seconds between automatic reloads of the page.
pub const REFRESH_SECS: u32 = 30;

pub(super) async fn status_page(State(state): State<ApiState>) -> Result<Response, HttpError> {
    let now = Timestamp::now();
    let configured: HashSet<String> = state.tokens.names().into_iter().collect();
    let mut snapshot = state.store.status_snapshot(now).await?;
    // A token removed by a reload stays in the table; the page shows the configured ones.
    snapshot.tokens.retain(|t| configured.contains(&t.name));
    if !state.push_configured {
        snapshot.push = None;
    }
    let view = state.store.cluster_view(state.lease_ttl()).await?;
    let me = state.cluster.as_ref().map(|c| c.me.as_str());
    let cluster = (me.is_some() || !view.is_empty()).then_some(Cluster { view: &view, me });
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // No script, no external resource: the page needs inline CSS and nothing else.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
                 form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        render(&snapshot, now, cluster),
    )
        .into_response())
}

/// What the page shows of the cluster.
#[derive(Clone, Copy, Debug)]
pub struct Cluster<'a> {
    pub view: &'a ClusterView,
    /// This instance's id, when it runs among others.
    pub me: Option<&'a str>,
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `2026-11-25 10:00 UTC`.
fn utc(t: Timestamp) -> String {
    t.to_datetime().format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A compact span: `45s`, `12m`, `3h 5m`, `4d 2h`.
fn span(ms: i64) -> String {
    let s = ms.unsigned_abs() / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 if s % 3600 / 60 == 0 => format!("{}h", s / 3600),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ if s % 86_400 / 3600 == 0 => format!("{}d", s / 86_400),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `t` relative to `now` (`5m ago`, `in 2h`), with the absolute time as a tooltip.
fn when(t: Timestamp, now: Timestamp) -> String {
    let d = now.0 - t.0;
    let rel = if d.abs() < 1000 {
        "just now".to_string()
    } else if d > 0 {
        format!("{} ago", span(d))
    } else {
        format!("in {}", span(d))
    };
    format!(
        "<time datetime=\"{}\" title=\"{}\">{rel}</time>",
        t.to_rfc3339(),
        utc(t)
    )
}

/// A run's duration: `850 ms`, `4.2 s`, `3m`.
fn duration(ms: i64) -> String {
    match ms {
        i64::MIN..=999 => format!("{} ms", ms.max(0)),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => span(ms),
    }
}

/// Renders the whole page from a snapshot as of `now`; with `cluster`, also the "Instances"
/// section and the tokens' holders.
pub fn render(s: &StatusSnapshot, now: Timestamp, cluster: Option<Cluster<'_>>) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let unhealthy = s
        .tokens
        .iter()
        .filter(|t| t.health == "unhealthy" || t.mdm_conflict.is_some())
        .count();
    let unsettled: u64 = s
        .events
        .iter()
        .filter(|e| e.state != "settled")
        .map(|e| e.count)
        .sum();
    let settled_day: u64 = s.hours.iter().map(|b| b.settled).sum();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>vpp-reconciler status</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>vpp-reconciler</h1>
<p class="meta">Status at <time datetime="{iso}">{at}</time> · reloads every {REFRESH_SECS} s · times in UTC</p>
<ul class="summary">
<li class="{tok_class}"><b>{ntok}</b> token{tok_s}, {unhealthy} need{need_s} attention</li>
<li><b>{unsettled}</b> event{uns_s} in flight</li>
<li><b>{settled_day}</b> settled in the last 24 h</li>
</ul>
</header>
<main>
"#,
        iso = now.to_rfc3339(),
        at = utc(now),
        tok_class = if unhealthy > 0 { "bad" } else { "ok" },
        ntok = s.tokens.len(),
        tok_s = plural(s.tokens.len() as u64),
        need_s = if unhealthy == 1 { "s" } else { "" },
        uns_s = plural(unsettled),
    );
    tokens_section(&mut h, s, now, cluster);
    if let Some(c) = cluster {
        instances_section(&mut h, c);
    }
    events_section(&mut h, s);
    chart_section(&mut h, &s.hours);
    failures_section(&mut h, s, now);
    syncs_section(&mut h, s, now);
    push_section(&mut h, s, now);
    h.push_str("</main>\n</body>\n</html>\n");
    h
}

/// The push outbox: where delivery stands, and what was parked.
fn push_section(h: &mut String, s: &StatusSnapshot, now: Timestamp) {
    let Some(p) = &s.push else {
        return;
    };
    let cls = if p.parked > 0 || p.last_error.is_some() && p.backlog > 0 {
        "bad"
    } else {
        "ok"
    };
    let _ = write!(
        h,
        "<section class=\"card\">\n<h2>Push to the MDM</h2>\n<table>\n\
         <tr><th>last delivered seq</th><td class=\"num\">{}</td></tr>\n\
         <tr><th>backlog</th><td class=\"num {cls}\">{} change{}</td></tr>\n\
         <tr><th>parked</th><td class=\"num\">{}</td></tr>\n\
         <tr><th>last success</th><td>{}</td></tr>\n\
         <tr><th>last error</th><td>{}</td></tr>\n</table>\n",
        p.last_delivered_seq,
        p.backlog,
        plural(p.backlog),
        p.parked,
        p.last_success_at
            .map(|t| when(t, now))
            .unwrap_or_else(|| "never".into()),
        escape_html(p.last_error.as_deref().unwrap_or("none")),
    );
    if !p.recent_parked.is_empty() {
        h.push_str("<p class=\"note\">Parked (undeliverable past dead_after); <code>vpp-reconciler push replay --after SEQ</code> sends them again:</p>\n<table>\n<tr><th>seq</th><th>parked</th><th>error</th></tr>\n");
        for x in &p.recent_parked {
            let _ = writeln!(
                h,
                "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                x.seq,
                when(x.parked_at, now),
                escape_html(x.last_error.as_deref().unwrap_or("-"))
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</section>\n");
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The instances on the database: last heartbeat, live or not, the tokens each holds.
fn instances_section(h: &mut String, c: Cluster<'_>) {
    let v = c.view;
    h.push_str("<section>\n<h2>Instances</h2>\n");
    if v.instances.is_empty() {
        h.push_str("<p class=\"empty\">No instance has sent a heartbeat yet.</p>\n");
    } else {
        h.push_str(
            "<table id=\"instances\">\n<thead><tr><th>instance</th><th>last seen</th>\
             <th>live</th><th>tokens held</th></tr></thead>\n<tbody>\n",
        );
        for i in &v.instances {
            let mut name = escape_html(&i.id);
            if c.me == Some(i.id.as_str()) {
                name.push_str(" <span class=\"badge muted\">this instance</span>");
            }
            let seen = i
                .last_seen
                .map(|t| when(t, v.now))
                .unwrap_or_else(|| "<span class=\"muted\">no heartbeat</span>".into());
            let live = if i.live {
                "<span class=\"badge ok\">live</span>"
            } else {
                "<span class=\"badge bad\">not live</span>"
            };
            let tokens = if i.tokens.is_empty() {
                "<span class=\"muted\">none</span>".to_string()
            } else {
                i.tokens
                    .iter()
                    .map(|t| escape_html(t))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                h,
                "<tr><td class=\"name\">{name}</td><td>{seen}</td><td>{live}</td><td>{tokens}</td></tr>"
            );
        }
        h.push_str("</tbody>\n</table>\n");
    }
    let _ = writeln!(
        h,
        "<p class=\"note\">{} of {} live (heartbeat within the lease TTL); times on the \
         database's clock.</p>\n</section>",
        v.live(),
        v.instances.len()
    );
}

/// A token's holder cell: the instance holding its unexpired lease, until when.
fn holder_cell(c: Cluster<'_>, token: &str) -> String {
    let lease = c.view.lease_of(token);
    let (Some(holder), Some(until)) = (lease.holder, lease.lease_expires_at) else {
        return "<span class=\"muted\">none</span>".into();
    };
    let mine = if c.me == Some(holder.as_str()) {
        " <span class=\"badge muted\">this instance</span>"
    } else {
        ""
    };
    format!(
        "{}{mine} <small class=\"muted\">until {}</small>",
        escape_html(&holder),
        when(until, c.view.now)
    )
}

fn tokens_section(
    h: &mut String,
    s: &StatusSnapshot,
    now: Timestamp,
    cluster: Option<Cluster<'_>>,
) {
    h.push_str("<section>\n<h2>Tokens</h2>\n");
    if s.tokens.is_empty() {
        h.push_str("<p class=\"empty\">No tokens configured.</p>\n</section>\n");
        return;
    }
    h.push_str(
        "<table id=\"tokens\">\n<thead><tr><th>token</th><th>organisation</th><th>health</th>\
         <th>expires</th><th>MDM conflict</th><th class=\"num\">pending</th>\
         <th class=\"num\">syncing</th>",
    );
    if cluster.is_some() {
        h.push_str("<th>holder</th>");
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    for t in &s.tokens {
        let health_class = match t.health.as_str() {
            "healthy" => "ok",
            "unhealthy" => "bad",
            _ => "muted",
        };
        let mut health = format!(
            "<span class=\"badge {health_class}\">{}</span>",
            escape_html(&t.health)
        );
        if let Some(reason) = &t.health_reason {
            let _ = write!(health, " <small>{}</small>", escape_html(reason));
        }
        if let Some(since) = t.health_since {
            let _ = write!(
                health,
                " <small class=\"muted\">since {}</small>",
                when(since, now)
            );
        }
        let expires = match t.expires_at {
            None => "<span class=\"muted\">unknown</span>".to_string(),
            Some(at) => {
                let days = (at.0 - now.0).div_euclid(86_400_000);
                let (class, left) = if at.0 <= now.0 {
                    ("bad", format!("expired {} ago", span(now.0 - at.0)))
                } else if days < 30 {
                    ("warn", format!("{days} day{} left", plural(days as u64)))
                } else {
                    ("", format!("{days} days left"))
                };
                format!(
                    "{} <span class=\"{class}\">({left})</span>",
                    at.to_datetime().format("%Y-%m-%d")
                )
            }
        };
        let conflict = match &t.mdm_conflict {
            None => "<span class=\"muted\">none</span>".to_string(),
            Some(c) => format!("<span class=\"bad\">{}</span>", escape_html(c)),
        };
        let org = t
            .org_name
            .as_deref()
            .or(t.location.as_deref())
            .map(escape_html)
            .unwrap_or_default();
        let holder = cluster
            .map(|c| format!("<td>{}</td>", holder_cell(c, &t.name)))
            .unwrap_or_default();
        let _ = writeln!(
            h,
            "<tr><td class=\"name\">{}</td><td>{org}</td><td>{health}</td><td class=\"nowrap\">{expires}</td>\
             <td>{conflict}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>{holder}</tr>",
            escape_html(&t.name),
            t.pending,
            t.syncing,
        );
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

fn events_section(h: &mut String, s: &StatusSnapshot) {
    // Columns: no outcome yet, then the known outcomes, then any other found in the data.
    let mut outcomes: Vec<Option<String>> = vec![None];
    outcomes.extend(Outcome::ALL.iter().map(|o| Some(o.as_str().to_string())));
    let mut states: Vec<String> = EventState::ALL
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    for e in &s.events {
        if !outcomes.contains(&e.outcome) {
            outcomes.push(e.outcome.clone());
        }
        if !states.contains(&e.state) {
            states.push(e.state.clone());
        }
    }
    h.push_str(
        "<section>\n<h2>Events by state and outcome</h2>\n<table id=\"events\">\n<thead><tr><th>state</th>",
    );
    for o in &outcomes {
        let _ = write!(
            h,
            "<th class=\"num\">{}</th>",
            o.as_deref().map_or("no outcome yet".into(), escape_html)
        );
    }
    h.push_str("<th class=\"num\">total</th></tr></thead>\n<tbody>\n");
    for state in &states {
        let label = if state == "settled" {
            "settled <small class=\"muted\">(last 24 h)</small>".to_string()
        } else {
            escape_html(state)
        };
        let _ = write!(h, "<tr><td>{label}</td>");
        let mut total = 0;
        for o in &outcomes {
            let n: u64 = s
                .events
                .iter()
                .filter(|e| &e.state == state && &e.outcome == o)
                .map(|e| e.count)
                .sum();
            total += n;
            let class = match (n, o.as_deref()) {
                (0, _) => "num zero",
                (_, Some("failed" | "timed_out" | "not_found")) => "num bad",
                _ => "num",
            };
            let _ = write!(h, "<td class=\"{class}\">{n}</td>");
        }
        let _ = writeln!(h, "<td class=\"num total\">{total}</td></tr>");
    }
    h.push_str(
        "</tbody>\n</table>\n<p class=\"note\">Pending and syncing: every event in flight. \
         Settled: those settled since the start of the chart below.</p>\n</section>\n",
    );
}

fn chart_section(h: &mut String, hours: &[HourBucket]) {
    h.push_str("<section>\n<h2>Last 24 hours</h2>\n<figure>\n");
    h.push_str(&chart_svg(hours));
    h.push_str(
        "<figcaption>Per hour (UTC): events settled, and Apple calls as far as the store \
         records them: Event Status polls plus pages fetched by sync runs (counted in the hour \
         the run started). Submissions, resubmissions and Service/Client Config calls are not \
         counted.</figcaption>\n</figure>\n</section>\n",
    );
}

/// One bar panel of the chart.
struct Panel {
    title: &'static str,
    /// CSS class of its bars.
    class: &'static str,
    value: fn(&HourBucket) -> u64,
    /// A bar's tooltip.
    detail: fn(&HourBucket) -> String,
    /// Its top edge in the SVG's coordinates.
    top: f64,
}

/// Two bar panels over the same hours: events settled, Apple calls. Each bar has a `<title>`
/// (the browser's tooltip) with its hour and count.
pub fn chart_svg(hours: &[HourBucket]) -> String {
    const W: f64 = 760.0;
    const LEFT: f64 = 44.0;
    const RIGHT: f64 = 8.0;
    const PANEL_H: f64 = 80.0;
    let n = hours.len().max(1) as f64;
    let slot = (W - LEFT - RIGHT) / n;
    let bar = (slot * 0.72).max(1.0);
    let panels = [
        Panel {
            title: "events settled",
            class: "settled",
            value: |b| b.settled,
            detail: |b| format!("{} events settled", b.settled),
            top: 22.0,
        },
        Panel {
            title: "Apple calls",
            class: "calls",
            value: HourBucket::apple_calls,
            detail: |b| {
                format!(
                    "{} Apple calls ({} Event Status polls, {} sync pages)",
                    b.apple_calls(),
                    b.polls,
                    b.sync_pages
                )
            },
            top: 138.0,
        },
    ];
    let mut svg = format!(
        "<svg id=\"chart\" role=\"img\" viewBox=\"0 0 {W} 250\" xmlns=\"http://www.w3.org/2000/svg\" \
         aria-label=\"events settled and Apple calls per hour, last 24 hours\">\n"
    );
    for Panel {
        title,
        class,
        value,
        detail,
        top,
    } in panels
    {
        let max = hours.iter().map(value).max().unwrap_or(0);
        let scale = if max == 0 { 0.0 } else { PANEL_H / max as f64 };
        let base = top + PANEL_H;
        let _ = writeln!(
            svg,
            "<text class=\"ptitle\" x=\"{LEFT}\" y=\"{}\">{title}</text>\
             <text class=\"axis\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{max}</text>\
             <text class=\"axis\" x=\"{}\" y=\"{base}\" text-anchor=\"end\">0</text>\
             <line class=\"grid\" x1=\"{LEFT}\" y1=\"{top}\" x2=\"{}\" y2=\"{top}\"/>\
             <line class=\"base\" x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\"/>",
            top - 8.0,
            LEFT - 6.0,
            top + 4.0,
            LEFT - 6.0,
            W - RIGHT,
            W - RIGHT,
        );
        for (i, b) in hours.iter().enumerate() {
            let v = value(b);
            let height = v as f64 * scale;
            let x = LEFT + i as f64 * slot + (slot - bar) / 2.0;
            let _ = writeln!(
                svg,
                "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{height:.1}\">\
                 <title>{}–{} UTC: {}</title></rect>",
                base - height,
                b.start.to_datetime().format("%H:%M"),
                Timestamp(b.start.0 + HOUR_MS).to_datetime().format("%H:%M"),
                detail(b),
            );
        }
        if max == 0 {
            let _ = writeln!(
                svg,
                "<text class=\"axis\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">none in the last 24 hours</text>",
                LEFT + (W - LEFT - RIGHT) / 2.0,
                top + PANEL_H / 2.0,
            );
        }
    }
    // Hour labels every third hour, under the lower panel.
    for (i, b) in hours.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        let _ = writeln!(
            svg,
            "<text class=\"axis\" x=\"{:.1}\" y=\"244\" text-anchor=\"middle\">{}</text>",
            LEFT + (i as f64 + 0.5) * slot,
            b.start.to_datetime().format("%H:%M"),
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn failures_section(h: &mut String, s: &StatusSnapshot, now: Timestamp) {
    h.push_str("<section>\n<h2>Recent failures</h2>\n");
    if s.failures.is_empty() {
        h.push_str("<p class=\"empty\">No failures recorded.</p>\n</section>\n");
        return;
    }
    h.push_str(
        "<table id=\"failures\">\n<thead><tr><th>when</th><th>token</th><th>eventId</th>\
         <th>source</th><th class=\"num\">error</th><th>message</th></tr></thead>\n<tbody>\n",
    );
    for f in &s.failures {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"name\">{}</td><td><code>{}</code></td><td>{}</td>\
             <td class=\"num bad\">{}</td><td class=\"msg\">{}</td></tr>",
            when(f.at, now),
            f.token.as_deref().map(escape_html).unwrap_or_default(),
            escape_html(&f.event_id),
            escape_html(&f.source),
            f.error_number,
            escape_html(&f.error_message),
        );
    }
    let _ = writeln!(
        h,
        "</tbody>\n</table>\n<p class=\"note\">The newest {} failures Apple reported, newest first.</p>\n</section>",
        crate::store::status::RECENT_FAILURES
    );
}

fn syncs_section(h: &mut String, s: &StatusSnapshot, now: Timestamp) {
    h.push_str("<section>\n<h2>Recent sync runs</h2>\n");
    if s.syncs.is_empty() {
        h.push_str("<p class=\"empty\">No sync runs yet.</p>\n</section>\n");
        return;
    }
    h.push_str(
        "<table id=\"syncs\">\n<thead><tr><th>started</th><th>token</th><th>kind</th>\
         <th>full</th><th class=\"num\">pages</th><th class=\"num\">records</th>\
         <th class=\"num\">duration</th><th>result</th></tr></thead>\n<tbody>\n",
    );
    for r in &s.syncs {
        let class = match r.result.as_str() {
            "ok" => "ok",
            "running" => "muted",
            _ => "bad",
        };
        let mut result = format!(
            "<span class=\"badge {class}\">{}</span>",
            escape_html(&r.result)
        );
        if let Some(e) = &r.error {
            let _ = write!(result, " <small>{}</small>", escape_html(e));
        }
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"name\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td>{result}</td></tr>",
            when(r.started_at, now),
            escape_html(&r.token),
            escape_html(&r.kind),
            if r.full { "full" } else { "incremental" },
            r.pages,
            r.records,
            r.duration_ms
                .map(duration)
                .unwrap_or_else(|| "<span class=\"muted\">running</span>".into()),
        );
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

const CSS: &str = "
:root{--fg:#1d2330;--muted:#6b7385;--line:#e3e6ec;--bg:#f6f7f9;--ok:#1f7a3d;--bad:#b42318;--warn:#9a6700}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}
header{background:#fff;border-bottom:1px solid var(--line);padding:16px 28px}
h1{margin:0;font-size:20px}
.meta{margin:2px 0 10px;color:var(--muted)}
.summary{display:flex;gap:12px;flex-wrap:wrap;list-style:none;margin:0;padding:0}
.summary li{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:6px 12px}
.summary li.bad{border-color:var(--bad);color:var(--bad)}
main{max-width:1200px;margin:0 auto;padding:8px 28px 40px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 18px;margin-top:18px}
h2{font-size:16px;margin:0 0 10px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.03em}
tbody tr:last-child td{border-bottom:none}
.num{text-align:right;font-variant-numeric:tabular-nums}
.zero{color:#b8bdc8}
.total{font-weight:600}
.name{font-weight:600}
.nowrap,time{white-space:nowrap}
.msg{max-width:480px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
small{font-size:12px}
.muted{color:var(--muted)}
.ok{color:var(--ok)}
.bad{color:var(--bad)}
.warn{color:var(--warn)}
.badge{display:inline-block;padding:0 7px;border-radius:9px;border:1px solid currentColor;font-size:12px}
.empty,.note,figcaption{color:var(--muted);font-size:12px;margin:8px 0 0}
figure{margin:0}
svg{width:100%;max-width:900px;height:auto;display:block}
svg .settled{fill:#2f6fdb}
svg .calls{fill:#8a5cd6}
svg .axis{font-size:10px;fill:#6b7385}
svg .ptitle{font-size:11px;font-weight:600;fill:#1d2330}
svg .grid{stroke:#eef0f4}
svg .base{stroke:#c5cad3}
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::status::{chart_start, RecentFailure, StateCount, CHART_HOURS};
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
        assert!(page.contains(
            "<td class=\"name\">i-1 <span class=\"badge muted\">this instance</span></td>"
        ));
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
}
