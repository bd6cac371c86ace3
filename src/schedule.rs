//! The full-sync schedule's syntax: a cron expression with six fields (seconds first), in UTC.
//! A leaf, so configuration validation and the scheduler that runs the schedule parse it with
//! the same function (what is accepted is what runs) without config depending on the
//! scheduler.

/// Parses a full-sync schedule: six fields with seconds, in UTC.
pub fn parse_schedule(expr: &str) -> Result<croner::Cron, String> {
    croner::Cron::new(expr)
        .with_seconds_required()
        .with_dom_and_dow()
        .parse()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_has_seconds_and_runs_in_utc() {
        let cron = parse_schedule("0 0 3 * * *").expect("valid");
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let next = cron
            .find_next_occurrence(&at("2026-01-01T04:00:00Z"), false)
            .unwrap();
        assert_eq!(next, at("2026-01-02T03:00:00Z"));
        // Exactly at a time: the next one, not the same (the loop asks after firing).
        let next = cron
            .find_next_occurrence(&at("2026-01-02T03:00:00Z"), false)
            .unwrap();
        assert_eq!(next, at("2026-01-03T03:00:00Z"));
        assert!(parse_schedule("0 3 * * *").is_err(), "five fields");
        assert!(parse_schedule("0 0 25 * * *").is_err(), "hour 25");
    }
}
