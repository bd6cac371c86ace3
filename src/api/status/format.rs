//! How the status page writes values: HTML escaping, UTC times, compact spans and times
//! relative to the page's `now`, durations and plurals. Pure text functions.

use crate::time::Timestamp;

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
pub(super) fn utc(t: Timestamp) -> String {
    t.to_datetime().format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A compact span: `45s`, `12m`, `3h 5m`, `4d 2h`.
pub(super) fn span(ms: i64) -> String {
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
pub(super) fn when(t: Timestamp, now: Timestamp) -> String {
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
pub(super) fn duration(ms: i64) -> String {
    match ms {
        i64::MIN..=999 => format!("{} ms", ms.max(0)),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => span(ms),
    }
}

pub(super) fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
