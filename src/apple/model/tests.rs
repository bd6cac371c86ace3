use serde_json::Value;

use super::*;
use crate::core::model::EventType;

#[test]
fn test_notification_needs_no_payload() {
    for body in [
        r#"{"notificationId":"t1","notificationType":"TEST_NOTIFICATION","uId":"1"}"#,
        r#"{"notificationId":"t1","notificationType":"TEST_NOTIFICATION","uId":2049025000431439,"notification":{}}"#,
    ] {
        let n = parse_notification(body.as_bytes()).unwrap();
        assert_eq!(n.notification, NotificationPayload::Test);
    }
}
use serde_json::json;

#[test]
fn dates() {
    let t = apple_date::parse("2030-11-08T22:33:22+0000").unwrap();
    assert_eq!(apple_date::format(t), "2030-11-08T22:33:22+0000");
    assert_eq!(apple_date::parse("2030-11-08T22:33:22Z"), Some(t));
    assert_eq!(apple_date::parse("2030-11-08T23:33:22+01:00"), Some(t));
    assert_eq!(apple_date::parse("yesterday"), None);
}

#[test]
fn kinds_round_trip() {
    for k in RequestKind::ALL {
        assert_eq!(k.as_str().parse::<RequestKind>(), Ok(k));
    }
    assert!("associate-users".parse::<RequestKind>().is_err());
    assert_eq!(RequestKind::RetireUsers.event_type(), EventType::Retire);
}

#[test]
fn counting() {
    let body = json!({"assets":[{"adamId":"1","pricingParam":"STDQ"},{"adamId":"2","pricingParam":"STDQ"}],
        "clientUserIds":["u1","u2","u2"],"serialNumbers":["s1"]});
    assert_eq!(count_entities(RequestKind::Associate, &body), Some(6));
    assert_eq!(count_entities(RequestKind::Revoke, &body), None);
    let users = json!({"users":[{"clientUserId":"a"},{"clientUserId":"b"}]});
    assert_eq!(count_entities(RequestKind::CreateUsers, &users), Some(2));
    assert_eq!(
        count_entities(RequestKind::CreateUsers, &json!({"x":1})),
        None
    );
}

fn limits(pairs: &[(&str, i64)]) -> Limits {
    Limits(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
    )
}

#[test]
fn split_assets_by_limits_with_dedupe() {
    let assets: Vec<Value> = (0..5)
        .map(|i| json!({"adamId": i.to_string(), "pricingParam": "STDQ"}))
        .collect();
    let users: Vec<String> = (0..7)
        .map(|i| format!("u{i}"))
        .chain(["u0".into()])
        .collect();
    let body = json!({"assets": assets, "clientUserIds": users, "serialNumbers": ["s1"]});
    let l = limits(&[
        ("maxAssets", 2),
        ("maxClientUserIds", 3),
        ("maxSerialNumbers", 10),
    ]);
    let parts = split_request(RequestKind::Associate, &body, &l).unwrap();
    // 3 asset chunks × 3 user chunks (7 unique users / 3).
    assert_eq!(parts.len(), 9);
    let total: u32 = parts
        .iter()
        .map(|p| count_entities(RequestKind::Associate, p).unwrap())
        .sum();
    assert_eq!(total, 5 * (7 + 1));
    for p in &parts {
        let r: ManageAssetsRequest = serde_json::from_value(p.clone()).unwrap();
        assert!(r.assets.len() <= 2 && r.client_user_ids.len() <= 3);
    }
}

#[test]
fn split_errors_name_the_value() {
    let l = Limits::default();
    let e = split_request(
        RequestKind::Associate,
        &json!({"assets":[{"adamId":"1"}],"clientUserIds":["a",""]}),
        &l,
    )
    .unwrap_err();
    assert!(e.to_string().contains("clientUserIds[1]"), "{e}");
    let e = split_request(
        RequestKind::Associate,
        &json!({"assets":[{"adamId":true}]}),
        &l,
    )
    .unwrap_err();
    assert!(e.to_string().contains("assets[0].adamId"), "{e}");
    let e = split_request(RequestKind::Revoke, &json!({}), &l).unwrap_err();
    assert!(matches!(e, SplitError::Empty { .. }));
    let e = split_request(
        RequestKind::UpdateUsers,
        &json!({"users":[{"clientUserId":"a","email":"x@y"},{"clientUserId":"a","email":"z@y"}]}),
        &l,
    )
    .unwrap_err();
    assert!(e.to_string().contains("\"a\""), "{e}");
}

#[test]
fn split_users_and_revoke() {
    let users: Vec<Value> = (0..250)
        .map(|i| json!({"clientUserId": format!("u{i}")}))
        .collect();
    let mut with_dup = users.clone();
    with_dup.push(json!({"clientUserId": "u0"}));
    let parts = split_request(
        RequestKind::CreateUsers,
        &json!({"users": with_dup}),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[2]["users"].as_array().unwrap().len(), 50);
    let serials: Vec<String> = (0..150).map(|i| format!("s{i}")).collect();
    let parts = split_request(
        RequestKind::Revoke,
        &json!({"serialNumbers": serials, "clientUserIds": ["u1"]}),
        &limits(&[("maxRevokeSerialNumbers", 100)]),
    )
    .unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["clientUserIds"], json!(["u1"]));
    assert!(parts[1].get("clientUserIds").is_none());
}

#[test]
fn notification_errors_have_paths() {
    let e = parse_notification(b"nope").unwrap_err();
    assert!(matches!(e, NotificationParseError::NotJson(_)));
    let e = parse_notification(b"[]").unwrap_err();
    assert_eq!(e, NotificationParseError::NotObject);
    let e = parse_notification(
        br#"{"notificationType":"TEST_NOTIFICATION","uId":"1","notification":{}}"#,
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "field notificationId: missing");
    let e = parse_notification(
        br#"{"notificationId":"n","notificationType":"ASSET_MANAGEMENT","uId":"1",
            "notification":{"eventId":"e","result":"SUCCESS","type":"ASSOCIATE",
            "assignments":[{"adamId":"1","serialNumber":"s"},{"serialNumber":"s"}]}}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("notification.assignments[1]"), "{e}");
    let e = parse_notification(
        br#"{"notificationId":"n","notificationType":"USER_MANAGEMENT","uId":"1","notification":{"result":"SUCCESS","type":"CREATE"}}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("eventId"), "{e}");
}

#[test]
fn lenient_lists_default_when_missing_or_null_and_skip_bad_entries() {
    let r: GetAssetsResponse = serde_json::from_str(r#"{"currentPageIndex":0}"#).unwrap();
    assert!(r.assets.is_empty());
    let r: GetUsersResponse = serde_json::from_str(r#"{"users":null}"#).unwrap();
    assert!(r.users.is_empty());
    let c: ServiceConfig =
        serde_json::from_str(r#"{"errorCodes":[{"errorNumber":1},"odd",{"x":1}]}"#).unwrap();
    assert_eq!(c.error_codes.len(), 1);
    // Not a list at all is still an error, as before.
    assert!(serde_json::from_str::<GetUsersResponse>(r#"{"users":"x"}"#).is_err());
    assert_eq!(
        serde_json::to_value(&c.error_codes).unwrap(),
        json!([{"errorNumber":1,"errorMessage":""}])
    );
}
