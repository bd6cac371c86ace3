//! What a request body tells the core: how many entities Apple must process.

use serde_json::Value;

use super::EventType;

fn unique_strings(v: Option<&Value>) -> usize {
    let Some(Value::Array(items)) = v else {
        return 0;
    };
    let mut seen: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

fn unique_objects(v: Option<&Value>, key: &str) -> usize {
    let Some(Value::Array(items)) = v else {
        return 0;
    };
    let mut seen: Vec<String> = items
        .iter()
        .filter_map(|i| match (i.get(key), i.get("pricingParam")) {
            (Some(k), p) => Some(format!(
                "{k}/{}",
                p.map(|p| p.to_string()).unwrap_or_default()
            )),
            _ => None,
        })
        .collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

/// Entities Apple processes for this request (design §2): assets × (serial numbers + users)
/// for associate/disassociate, users for user events. `None` where the body does not tell
/// (REVOKE, whose effect depends on Apple's current assignments) or is not a request.
pub fn count_entities(event_type: EventType, body: &Value) -> Option<u32> {
    if !body.is_object() {
        return None;
    }
    let n = match event_type {
        EventType::Associate | EventType::Disassociate => {
            let assets = unique_objects(body.get("assets"), "adamId");
            let targets = unique_strings(body.get("serialNumbers"))
                + unique_strings(body.get("clientUserIds"));
            assets * targets
        }
        EventType::Create | EventType::Update | EventType::Retire => {
            unique_objects(body.get("users"), "clientUserId")
        }
        EventType::Revoke => return None,
    };
    u32::try_from(n).ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn associate_counts_assets_times_targets() {
        let body = json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}, {"adamId": "2", "pricingParam": "STDQ"}],
            "serialNumbers": ["a", "b", "a"], "clientUserIds": ["u1"]});
        assert_eq!(count_entities(EventType::Associate, &body), Some(6));
    }

    #[test]
    fn users_and_unknowns() {
        let body =
            json!({"users": [{"clientUserId": "u1", "email": "a@b"}, {"clientUserId": "u2"}]});
        assert_eq!(count_entities(EventType::Create, &body), Some(2));
        assert_eq!(
            count_entities(EventType::Revoke, &json!({"clientUserIds": ["u1"]})),
            None
        );
        assert_eq!(count_entities(EventType::Associate, &json!([])), None);
        assert_eq!(
            count_entities(EventType::Associate, &json!({"assets": []})),
            None
        );
    }
}
