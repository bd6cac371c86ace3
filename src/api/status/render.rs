//! The page itself: [`render`], a pure function of the snapshot, `now` and the cluster view,
//! writes the header and one section per concern (tokens, instances, events, the chart,
//! recent failures, syncs, push) with the inline CSS. Every value from data is escaped.

use std::fmt::Write as _;

use super::chart::chart_section;
use super::format::{duration, escape_html, plural, span, utc, when};
use super::{Cluster, REFRESH_SECS};
use crate::core::{Outcome, State as EventState};
use crate::store::status::StatusSnapshot;
use crate::time::Timestamp;

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
