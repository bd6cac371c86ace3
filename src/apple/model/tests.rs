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
        .map(|p| count_entities(RequestKind::Associate, &p).unwrap())
        .sum();
    assert_eq!(total, 5 * (7 + 1));
    for p in &parts {
        let r: ManageAssetsRequest = serde_json::from_value(p).unwrap();
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
    assert_eq!(parts.get(2).unwrap()["users"].as_array().unwrap().len(), 50);
    let serials: Vec<String> = (0..150).map(|i| format!("s{i}")).collect();
    let parts = split_request(
        RequestKind::Revoke,
        &json!({"serialNumbers": serials, "clientUserIds": ["u1"]}),
        &limits(&[("maxRevokeSerialNumbers", 100)]),
    )
    .unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts.get(0).unwrap()["clientUserIds"], json!(["u1"]));
    assert!(parts.get(1).unwrap().get("clientUserIds").is_none());
    assert_eq!(parts.get(2), None);
}

/// The split is lazy: its size is known from the deduplicated lists alone, each request is
/// cut when asked for, and the caps refuse a body before any request is built.
#[test]
fn split_is_lazy_and_capped() {
    // 2,600 assets × 1 serial at maxAssets 25: 104 requests, over the cap of 100.
    let assets: Vec<Value> = (0..2_600)
        .map(|i| json!({"adamId": i.to_string(), "pricingParam": "STDQ"}))
        .collect();
    let body = json!({"assets": assets, "serialNumbers": ["s1"]});
    let split = split_request(RequestKind::Associate, &body, &Limits::default()).unwrap();
    assert_eq!((split.len(), split.entities()), (104, 2_600));
    let e = split.within_caps().unwrap_err();
    assert_eq!(
        (e.what, e.limit, e.value),
        ("make Apple requests", MAX_SUBMIT_REQUESTS as u64, 104)
    );
    assert!(
        e.to_string().contains("104") && e.to_string().contains("100"),
        "{e}"
    );
    // The last request holds the last 25 assets; past it there is none.
    let last: ManageAssetsRequest = serde_json::from_value(split.get(103).unwrap()).unwrap();
    assert_eq!(last.assets.len(), 25);
    assert_eq!(last.assets[24].adam_id, "2599");
    assert_eq!(split.get(104), None);
    assert_eq!(split.iter().count(), 104);

    // 25 assets × 5,000 serial numbers: 5 requests but 125,000 entities.
    let assets: Vec<Value> = (0..25)
        .map(|i| json!({"adamId": i.to_string(), "pricingParam": "STDQ"}))
        .collect();
    let serials: Vec<String> = (0..5_000).map(|i| format!("s{i}")).collect();
    let body = json!({"assets": assets, "serialNumbers": serials});
    let split = split_request(RequestKind::Associate, &body, &Limits::default()).unwrap();
    assert_eq!(split.len(), 5);
    let e = split.within_caps().unwrap_err();
    assert_eq!((e.what, e.value), ("name entities", 125_000));
    assert!(
        e.to_string().contains(&MAX_SUBMIT_ENTITIES.to_string()),
        "{e}"
    );

    // At the caps exactly: accepted. 100 requests of 1,000 serial numbers for one asset.
    let serials: Vec<String> = (0..100_000).map(|i| format!("s{i}")).collect();
    let body =
        json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": serials});
    let split = split_request(RequestKind::Associate, &body, &Limits::default()).unwrap();
    assert_eq!((split.len(), split.entities()), (100, 100_000));
    split.within_caps().unwrap();
    // Requests are cut in order: ids 1000..2000 in the second.
    let second: ManageAssetsRequest = serde_json::from_value(split.get(1).unwrap()).unwrap();
    assert_eq!(
        second.serial_numbers.first().map(String::as_str),
        Some("s1000")
    );
    assert_eq!(second.serial_numbers.len(), 1000);
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
