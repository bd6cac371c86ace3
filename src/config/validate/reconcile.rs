//! `[reconcile]`: the notification grace, polling, give-up and resubmission times, retention,
//! and the full-sync schedule (parsed as the scheduler parses it).

use super::*;

impl Validator<'_> {
    pub(super) fn reconcile(&mut self, raw: RawReconcile) -> Result<ReconcileConfig, ConfigError> {
        let notification_grace =
            self.duration("reconcile.notification_grace", raw.notification_grace, "5m")?;
        let poll_min = self.duration("reconcile.poll_min", raw.poll_min, "30s")?;
        let poll_max = self.duration("reconcile.poll_max", raw.poll_max, "10m")?;
        let resubmit_after =
            self.duration("reconcile.resubmit_after", raw.resubmit_after, "10m")?;
        let give_up_after = self.duration("reconcile.give_up_after", raw.give_up_after, "24h")?;
        let retention = self.duration("reconcile.retention", raw.retention, "30d")?;
        self.nonzero("reconcile.poll_min", poll_min)?;
        self.nonzero("reconcile.poll_max", poll_max)?;
        self.nonzero("reconcile.resubmit_after", resubmit_after)?;
        self.nonzero("reconcile.give_up_after", give_up_after)?;
        self.nonzero("reconcile.retention", retention)?;
        if poll_max < poll_min {
            return Err(self.err(
                "reconcile.poll_max",
                format!(
                    "{} is shorter than reconcile.poll_min {}",
                    q(&display_duration(poll_max)),
                    q(&display_duration(poll_min))
                ),
            ));
        }
        if poll_min < APPLE_POLL_FLOOR {
            self.warn(format!(
                "reconcile.poll_min {} is below Apple's 30s floor between Event Status polls",
                q(&display_duration(poll_min))
            ));
        }
        if notification_grace < APPLE_NOTIFICATION_GRACE {
            self.warn(format!(
                "reconcile.notification_grace {} is below the 5m Apple suggests waiting for \
                 notifications before polling",
                q(&display_duration(notification_grace))
            ));
        }
        if give_up_after <= notification_grace {
            self.warn(format!(
                "reconcile.give_up_after {} is not longer than reconcile.notification_grace {}: \
                 events will time out before their first poll",
                q(&display_duration(give_up_after)),
                q(&display_duration(notification_grace))
            ));
        }
        let full_sync_schedule = raw
            .full_sync_schedule
            .unwrap_or_else(|| "0 0 3 * * *".to_string());
        validate_cron(&full_sync_schedule).map_err(|why| {
            self.err(
                "reconcile.full_sync_schedule",
                format!("{} {why}", q(&full_sync_schedule)),
            )
        })?;
        Ok(ReconcileConfig {
            notification_grace,
            poll_min,
            poll_max,
            resubmit_after,
            give_up_after,
            full_sync_schedule,
            retention,
        })
    }
}

/// Six fields with seconds, parsed exactly as the scheduler will parse it at run time.
fn validate_cron(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    if fields != 6 {
        return Err(format!(
            "has {fields} fields; expected 6 (sec min hour day-of-month month day-of-week), \
             e.g. \"0 0 3 * * *\""
        ));
    }
    crate::schedule::parse_schedule(expr)
        .map(|_| ())
        .map_err(|_| {
            "is not a valid cron expression (sec min hour day-of-month month day-of-week), \
             e.g. \"0 0 3 * * *\""
                .to_string()
        })
}
