//! The page's "Last 24 hours" chart: an inline SVG of two bar panels over the same hours
//! (events settled, Apple calls), each bar with a `<title>` tooltip. No script.

use std::fmt::Write as _;

use crate::store::status::{HourBucket, HOUR_MS};
use crate::time::Timestamp;

pub(super) fn chart_section(h: &mut String, hours: &[HourBucket]) {
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
