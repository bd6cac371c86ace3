//! Contract tests: every example body quoted in /work/shared/docs/apple-api.md and the
//! handling-error-responses seed decodes into our models, plus the leniency rules
//! (unknown fields and enum values, missing optionals, bad dates, i32::MAX counts).

use serde_json::json;
use vpp_reconciler::apple::error::ApiError;
use vpp_reconciler::apple::model::*;
use vpp_reconciler::core::model::EventType;
use vpp_reconciler::time::Timestamp;

fn exp_2030() -> Option<Timestamp> {
    apple_date::parse("2030-11-08T22:33:22+0000")
}

#[test]
fn service_config_limits_example() {
    let body = r#"{"limits":{"maxAssets":25,"maxUsers":100,"maxNotificationLength":512,"maxRevokeClientUserIds":100,
 "maxClientUserIds":1000,"maxSerialNumbers":1000,"maxRevokeSerialNumbers":100,
 "maxRequestPerSecond":15,"maxSubscriptions":25,"maxSubscriptionClientUserIds":1000,
 "maxMdmNameLength":100,"maxMdmMetadataLength":255,"maxMdmIdLength":100},
 "errorCodes":[{"errorNumber":9709,"errorMessage":"There aren't enough assets available to complete this association."},
   {"errorNumber":9634,"errorMessage":"Service removed."},{"bogus":true}],
 "notificationTypes":["ASSET_COUNT","ASSET_MANAGEMENT","USER_MANAGEMENT","USER_ASSOCIATED",
   "SUBSCRIPTION_MANAGEMENT","SUBSCRIPTION_COUNT","UNLIMITED_ASSET"],
 "urls":{"invitationEmail":"https://vpp.itunes.apple.com/mdm/v2/invitation?code=%25inviteCode%25",
   "clientConfig":"https://vpp.itunes.apple.com/mdm/v2/client/config",
   "createUsers":"https://vpp.itunes.apple.com/mdm/v2/users/create",
   "getAssignments":"https://vpp.itunes.apple.com/mdm/v2/assignments",
   "revokeAssets":"https://vpp.itunes.apple.com/mdm/v2/assets/revoke",
   "contentMetadataLookup":"https://uclient-api.itunes.apple.com/WebObjects/MZStorePlatform.woa/wa/lookup",
   "getUsers":"https://vpp.itunes.apple.com/mdm/v2/users",
   "eventStatus":"https://vpp.itunes.apple.com/mdm/v2/status",
   "associateAssets":"https://vpp.itunes.apple.com/mdm/v2/assets/associate",
   "disassociateAssets":"https://vpp.itunes.apple.com/mdm/v2/assets/disassociate",
   "updateUsers":"https://vpp.itunes.apple.com/mdm/v2/users/update",
   "getAssets":"https://vpp.itunes.apple.com/mdm/v2/assets",
   "retireUsers":"https://vpp.itunes.apple.com/mdm/v2/users/retire"},
 "somethingNew":{"x":1}}"#;
    let c: ServiceConfig = serde_json::from_str(body).unwrap();
    let l = &c.limits;
    assert_eq!(l.max_assets(), Some(25));
    assert_eq!(l.max_users(), Some(100));
    assert_eq!(l.max_client_user_ids(), Some(1000));
    assert_eq!(l.max_serial_numbers(), Some(1000));
    assert_eq!(l.max_revoke_client_user_ids(), Some(100));
    assert_eq!(l.max_revoke_serial_numbers(), Some(100));
    assert_eq!(l.max_request_per_second(), Some(15));
    assert_eq!(l.max_notification_length(), Some(512));
    assert_eq!(l.max_mdm_metadata_length(), Some(255));
    assert_eq!(l.get("maxSubscriptionClientUserIds"), Some(1000));
    // The malformed error code is skipped, not fatal.
    assert_eq!(c.error_codes.len(), 2);
    assert_eq!(c.error_codes[1].error_number, 9634);
    assert_eq!(c.notification_types.len(), 7);
    assert_eq!(c.urls.len(), 13);
    for key in [
        "getAssets",
        "getAssignments",
        "getUsers",
        "associateAssets",
        "disassociateAssets",
        "revokeAssets",
        "createUsers",
        "updateUsers",
        "retireUsers",
        "eventStatus",
        "clientConfig",
    ] {
        assert!(c.urls.contains_key(key), "{key}");
    }
    for k in RequestKind::ALL {
        assert!(c.urls.contains_key(k.url_key()), "{k}");
    }
}

#[test]
fn service_config_odd_limits() {
    let c: ServiceConfig = serde_json::from_str(
        r#"{"limits":{"maxAssets":"30","maxUsers":0,"maxSerialNumbers":-1,"maxClientUserIds":"x"}}"#,
    )
    .unwrap();
    assert_eq!(c.limits.max_assets(), Some(30));
    assert_eq!(c.limits.max_users(), None);
    assert_eq!(c.limits.max_serial_numbers(), None);
    assert_eq!(c.limits.max_client_user_ids(), None);
    let empty: ServiceConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, ServiceConfig::default());
}

#[test]
fn client_config_zen_fixture() {
    let body = r#"{"countryISO2ACode":"DE","defaultPlatform":"enterprisestore","locationName":"Zentral Location",
"mdmInfo":{"id":"29dd58b6-5cc6-4e1f-9a61-4ad8fa9a5ad0","metadata":"zentral.example.com","name":"Zentral"},
"notificationAuthToken":"0123456789abcdef","notificationUrl":"https://zentral.example.com/public/mdm/locations/1/notify/",
"subscribedNotificationTypes":["ASSET_COUNT","ASSET_MANAGEMENT"],"tokenExpirationDate":"2023-09-26T08:30:39+0000",
"uId":"981060278089131045","websiteURL":"https://business.apple.com"}"#;
    let c: ClientConfigResponse = serde_json::from_str(body).unwrap();
    assert_eq!(c.country_iso2a_code.as_deref(), Some("DE"));
    assert_eq!(c.default_platform.as_deref(), Some("enterprisestore"));
    assert_eq!(c.mdm_info.as_ref().unwrap().name, "Zentral");
    assert_eq!(
        c.subscribed_notification_types,
        vec!["ASSET_COUNT", "ASSET_MANAGEMENT"]
    );
    assert_eq!(
        c.token_expiration_date,
        apple_date::parse("2023-09-26T08:30:39+0000")
    );
    assert!(c.token_expiration_date.is_some());
    assert_eq!(c.u_id.as_deref(), Some("981060278089131045"));
    assert_eq!(c.website_url.as_deref(), Some("https://business.apple.com"));
    assert_eq!(
        c.notification_auth_token.as_ref().map(|s| s.expose()),
        Some("0123456789abcdef")
    );
    assert!(!format!("{c:?}").contains("0123456789abcdef"));
    // Minimal response: every field optional.
    let c: ClientConfigResponse = serde_json::from_str(r#"{"uId":981060278089131045}"#).unwrap();
    assert_eq!(c.u_id.as_deref(), Some("981060278089131045"));
    assert!(c.mdm_info.is_none());
}

#[test]
fn client_config_request_serializes_request_names() {
    let r = ClientConfigRequest {
        mdm_info: Some(MdmInfo {
            id: "id".into(),
            name: "n".into(),
            metadata: "m".into(),
        }),
        notification_auth_token: Some(vpp_reconciler::secret::Secret::new("secret")),
        notification_types: Some(vec!["ASSET_MANAGEMENT".into()]),
        notification_url: Some("https://x/y".into()),
    };
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["notificationTypes"], json!(["ASSET_MANAGEMENT"]));
    assert_eq!(v["notificationUrl"], "https://x/y");
    assert_eq!(v["notificationAuthToken"], "secret");
    assert_eq!(v["mdmInfo"]["metadata"], "m");
    assert!(!format!("{r:?}").contains("secret"));
}

#[test]
fn get_assets_example() {
    let body = r#"{"assets":[{"adamId":"408709785","assignedCount":5000,"availableCount":10000,
"deviceAssignable":true,"pricingParam":"STDQ","productType":"App","retiredCount":0,"revocable":true,
"supportedPlatforms":["iOS"],"totalCount":15000}],"currentPageIndex":0,"size":5,
"tokenExpirationDate":"2030-11-08T22:33:22+0000","totalPages":1,"uId":"2049025000431439",
"versionId":"70e8c740-514c-11eb-bb63-a90b882fcd52"}"#;
    let r: GetAssetsResponse = serde_json::from_str(body).unwrap();
    assert_eq!(r.assets.len(), 1);
    let a = &r.assets[0];
    assert_eq!(a.adam_id, "408709785");
    assert_eq!(a.pricing_param, PricingParam::Stdq);
    assert_eq!(a.product_type, Some(ProductType::App));
    assert_eq!(
        (a.assigned_count, a.available_count, a.total_count),
        (5000, 10000, 15000)
    );
    assert_eq!(a.supported_platforms, vec![Platform::Ios]);
    assert!(!a.is_unlimited());
    assert_eq!(r.page.current_page_index, Some(0));
    assert_eq!(r.page.next_page_index, None);
    assert_eq!(r.page.total_pages, Some(1));
    assert_eq!(
        r.page.version_id.as_deref(),
        Some("70e8c740-514c-11eb-bb63-a90b882fcd52")
    );
    assert_eq!(r.page.token_expiration_date, exp_2030());
    assert!(r.unlimited_assets.is_empty());
}

#[test]
fn unlimited_assets_and_unknown_values() {
    let body = r#"{"assets":[{"adamId":"1","pricingParam":"STDQ","productType":"App","totalCount":2147483647,
  "availableCount":2147483600,"assignedCount":47,"supportedPlatforms":["iOS","visionOS","carOS"]},
  {"adamId":2,"pricingParam":"GOLD","productType":"Podcast","newField":[1,2]}],
 "unlimitedAssets":[{"adamId":"3","pricingParam":"PLUS","productType":"Book","assignedCount":4,
   "deviceAssignable":false,"revocable":false,"supportedPlatforms":["macOS"]}],
 "currentPageIndex":0,"nextPageIndex":1,"totalPages":2,"size":2,"tokenExpirationDate":"not a date",
 "uId":"1","versionId":"v"}"#;
    let r: GetAssetsResponse = serde_json::from_str(body).unwrap();
    assert!(r.assets[0].is_unlimited());
    assert_eq!(r.assets[0].total_count, i64::from(i32::MAX));
    assert_eq!(
        r.assets[0].supported_platforms,
        vec![Platform::Ios, Platform::VisionOs, Platform::Unknown]
    );
    assert_eq!(r.assets[1].adam_id, "2");
    assert_eq!(r.assets[1].pricing_param, PricingParam::Unknown);
    assert_eq!(r.assets[1].product_type, Some(ProductType::Unknown));
    assert_eq!(r.assets[1].total_count, 0);
    assert_eq!(r.unlimited_assets[0].pricing_param, PricingParam::Plus);
    assert_eq!(r.unlimited_assets[0].product_type, Some(ProductType::Book));
    assert_eq!(r.page.next_page_index, Some(1));
    // A bad date does not fail the response.
    assert_eq!(r.page.token_expiration_date, None);
}

#[test]
fn assignments_with_user_state() {
    let body = r#"{"assignments":[{"adamId":"1234","pricingParam":"STDQ","serialNumber":"device1"},
 {"adamId":"1234","pricingParam":"STDQ","clientUserId":"user1","userStatus":"Associated","idHash":"h"},
 {"adamId":"1234","pricingParam":"STDQ","clientUserId":"user2","userStatus":"Frozen"}],
 "currentPageIndex":0,"size":3,"totalPages":1,"versionId":"v1","uId":"2049025000431439"}"#;
    let r: GetAssignmentsResponse = serde_json::from_str(body).unwrap();
    assert_eq!(
        r.assignments[0].assignee(),
        Assignee::Device("device1".into())
    );
    assert_eq!(r.assignments[1].assignee(), Assignee::User("user1".into()));
    assert_eq!(r.assignments[1].user_status, Some(UserStatus::Associated));
    assert_eq!(r.assignments[1].id_hash.as_deref(), Some("h"));
    assert_eq!(r.assignments[2].user_status, Some(UserStatus::Unknown));
    assert_eq!(r.page.token_expiration_date, None, "missing optional");
}

#[test]
fn users_response() {
    let body = r#"{"users":[{"clientUserId":"u1","email":"u1@example.com","inviteCode":"abc","status":"Registered"},
 {"clientUserId":"u2","idHash":"xyz","status":"Associated"},
 {"clientUserId":"u3","status":"Retired"},{"clientUserId":"u4","status":"Deleted"},
 {"clientUserId":"u5","status":"Suspended"},{"clientUserId":"u6"}],
 "currentPageIndex":0,"totalPages":1,"size":6,"versionId":"v","tokenExpirationDate":"2030-11-08T22:33:22Z"}"#;
    let r: GetUsersResponse = serde_json::from_str(body).unwrap();
    let s: Vec<UserStatus> = r.users.iter().map(|u| u.status).collect();
    assert_eq!(
        s,
        vec![
            UserStatus::Registered,
            UserStatus::Associated,
            UserStatus::Retired,
            UserStatus::Deleted,
            UserStatus::Unknown,
            UserStatus::Unknown
        ]
    );
    assert_eq!(r.users[0].invite_code.as_deref(), Some("abc"));
    // RFC 3339 accepted too.
    assert_eq!(r.page.token_expiration_date, exp_2030());
}

#[test]
fn event_response_example() {
    let r: EventResponse = serde_json::from_str(
        r#"{"eventId":"954910a8-1a3b-4a44-bd79-1b41cf42ad17","tokenExpirationDate":"2030-11-08T22:33:22+0000","uId":"2049025000431439"}"#,
    )
    .unwrap();
    assert_eq!(r.event_id, "954910a8-1a3b-4a44-bd79-1b41cf42ad17");
    assert_eq!(r.token_expiration_date, exp_2030());
    assert!(serde_json::from_str::<EventResponse>(r#"{"uId":"1"}"#).is_err());
}

#[test]
fn status_response_examples() {
    // docs/apple-api.md#event-status
    let r: StatusResponse = serde_json::from_str(
        r#"{"eventStatus":"FAILED","eventType":"ASSOCIATE","failures":[{"errorInfo":{"clientUserIds":["client-4"]},
 "errorNumber":9609,"errorMessage":"Registered user not found"}],"numCompleted":14,"numRequested":16,
 "tokenExpirationDate":"2030-11-08T22:33:22+0000","uId":"2049025000431439"}"#,
    )
    .unwrap();
    assert_eq!(r.event_status, EventStatus::Failed);
    assert_eq!(r.event_type(), Some(EventType::Associate));
    assert_eq!((r.num_completed, r.num_requested), (Some(14), Some(16)));
    assert_eq!(r.failures[0].error_number, 9609);
    assert_eq!(
        r.failures[0].error_info.as_ref().unwrap().client_user_ids,
        vec!["client-4"]
    );
    let f = r.failures[0].to_failure();
    assert_eq!(f.error_number, 9609);
    assert_eq!(f.error_info.unwrap()["clientUserIds"], json!(["client-4"]));

    // seeds/handling-error-responses.md
    let r: StatusResponse = serde_json::from_str(
        r#"{     "eventStatus": "FAILED",     "eventType": "ASSOCIATE",     "failures": [         {             "errorInfo": {                 "clientUserIds": [                     "user102",                     "user101"                 ]             },             "errorNumber": 9609,             "errorMessage": "Unable to find registered user."         }     ],     "numCompleted": 0,     "numRequested": 2,     "tokenExpirationDate": "2030-11-08T22:33:22+0000",     "uId": "2049025000431439" }"#,
    )
    .unwrap();
    assert_eq!(r.num_completed, Some(0));
    assert_eq!(
        r.failures[0].error_info.as_ref().unwrap().client_user_ids,
        vec!["user102", "user101"]
    );

    // PENDING, no failures, unknown future values.
    let r: StatusResponse = serde_json::from_str(
        r#"{"eventStatus":"PARTIAL","eventType":"SUBSCRIBE","numRequested":"3"}"#,
    )
    .unwrap();
    assert_eq!(r.event_status, EventStatus::Unknown);
    assert_eq!(r.event_type(), None);
    assert_eq!(r.num_requested, Some(3));
    assert!(r.failures.is_empty());
    let r: StatusResponse =
        serde_json::from_str(r#"{"eventStatus":"PENDING","eventType":"RETIRE","failures":null}"#)
            .unwrap();
    assert_eq!(r.event_status, EventStatus::Pending);
    assert_eq!(r.event_type(), Some(EventType::Retire));
}

#[test]
fn synchronous_error_response_example() {
    let body = br#"{     "errorNumber": 9726,     "errorMessage": "This request contains an unsupported HTTP method for the requested endpoint." }"#;
    let e: ErrorResponse = serde_json::from_slice(body).unwrap();
    assert_eq!(e.error_number, 9726);
    let err = ApiError::classify(405, body, None).unwrap();
    assert_eq!(err.error_number(), Some(9726));
    assert!(matches!(
        err,
        ApiError::Apple {
            http_status: 405,
            ..
        }
    ));
}

#[test]
fn notification_asset_management_failure_example() {
    let body = br#"{     "notification": {         "assignments": [             {                 "adamId": "1234",                 "pricingParam": "STDQ",                 "serialNumber": "device1"             },             {                 "adamId": "1234",                 "pricingParam": "STDQ",                 "clientUserId": "user1"             }         ],         "error": {             "errorMessage": "There aren't enough assets available to complete this association.",             "errorNumber": 9709         },         "eventId": "f743928c-cc93-4a17-a53f-50c552ce1e06",         "result": "FAILURE",         "type": "ASSOCIATE"     },     "notificationId": "eba66-1bc1-4285-aa0a-7256293c5ca7",     "notificationType": "ASSET_MANAGEMENT",     "uId": "2049025000431439" }"#;
    let n = parse_notification(body).unwrap();
    assert_eq!(n.notification_id, "eba66-1bc1-4285-aa0a-7256293c5ca7");
    assert_eq!(n.notification_type, NotificationType::AssetManagement);
    assert_eq!(n.u_id, "2049025000431439");
    assert_eq!(n.event_id(), Some("f743928c-cc93-4a17-a53f-50c552ce1e06"));
    let NotificationPayload::AssetManagement(p) = &n.notification else {
        panic!("{n:?}")
    };
    assert_eq!(p.result, NotificationResult::Failure);
    assert_eq!(p.kind, AssetManagementType::Associate);
    assert_eq!(p.kind.event_type(), Some(EventType::Associate));
    assert_eq!(p.assignments.len(), 2);
    assert_eq!(p.error.as_ref().unwrap().error_number, 9709);
}

#[test]
fn notification_associate_success_and_revoke() {
    let body = br#"{"notification":{"assignments":[{"adamId":"361304891","pricingParam":"STDQ","serialNumber":"0123456789ABCDEF"}],
"eventId":"5b5e3b2d-1c5b-4a0e-9a4c-6a1f6b7e2f10","result":"SUCCESS","type":"ASSOCIATE"},
"notificationId":"2c3ef1b1-4c2b-4c8c-9c4c-1d2b3c4d5e6f","notificationType":"ASSET_MANAGEMENT","uId":"981060278089131045"}"#;
    let n = parse_notification(body).unwrap();
    let NotificationPayload::AssetManagement(p) = &n.notification else {
        panic!()
    };
    assert_eq!(p.result, NotificationResult::Success);
    assert!(p.error.is_none());
    assert_eq!(
        p.assignments[0].serial_number.as_deref(),
        Some("0123456789ABCDEF")
    );

    let n = parse_notification(
        br#"{"notification":{"eventId":"e","result":"PARTIAL","type":"REVOKE","assignments":[]},
        "notificationId":"n","notificationType":"ASSET_MANAGEMENT","uId":"1"}"#,
    )
    .unwrap();
    let NotificationPayload::AssetManagement(p) = &n.notification else {
        panic!()
    };
    assert_eq!(p.result, NotificationResult::Unknown);
    assert_eq!(p.kind.event_type(), Some(EventType::Revoke));
}

#[test]
fn notification_asset_count() {
    let n = parse_notification(
        br#"{"notification":{"adamId":"361304891","countDelta":1,"pricingParam":"STDQ"},
        "notificationId":"a1","notificationType":"ASSET_COUNT","uId":"981060278089131045"}"#,
    )
    .unwrap();
    assert_eq!(
        n.notification,
        NotificationPayload::AssetCount(AssetCountNotification {
            adam_id: "361304891".into(),
            count_delta: 1,
            pricing_param: PricingParam::Stdq
        })
    );
    let n = parse_notification(
        br#"{"notification":{"adamId":361304891,"countDelta":-3,"pricingParam":"PLUS"},
        "notificationId":"a2","notificationType":"ASSET_COUNT","uId":"1"}"#,
    )
    .unwrap();
    let NotificationPayload::AssetCount(c) = n.notification else {
        panic!()
    };
    assert_eq!(c.count_delta, -3);
}

#[test]
fn notification_user_management_and_associated() {
    let n = parse_notification(
        br#"{"notification":{"eventId":"ev-1","result":"SUCCESS","type":"CREATE",
          "users":[{"clientUserId":"u1","email":"u1@example.com","inviteCode":"i1","status":"Registered"}]},
        "notificationId":"n1","notificationType":"USER_MANAGEMENT","uId":"1"}"#,
    )
    .unwrap();
    let NotificationPayload::UserManagement(p) = &n.notification else {
        panic!()
    };
    assert_eq!(p.kind.event_type(), Some(EventType::Create));
    assert_eq!(p.users[0].status, UserStatus::Registered);
    assert_eq!(n.event_id(), Some("ev-1"));

    let n = parse_notification(
        br#"{"notification":{"eventId":"ev-2","result":"FAILURE","type":"RETIRE","users":[{"clientUserId":"u9"}],
          "error":{"errorNumber":9609,"errorMessage":"x","errorInfo":{"clientUserIds":["u9"]}}},
        "notificationId":"n2","notificationType":"USER_MANAGEMENT","uId":"1"}"#,
    )
    .unwrap();
    let NotificationPayload::UserManagement(p) = &n.notification else {
        panic!()
    };
    assert_eq!(p.result, NotificationResult::Failure);
    assert_eq!(p.error.as_ref().unwrap().error_number, 9609);

    let n = parse_notification(
        br#"{"notification":{"associatedUsers":[{"clientUserId":"u1","idHash":"h","status":"Associated"}]},
        "notificationId":"n3","notificationType":"USER_ASSOCIATED","uId":"1"}"#,
    )
    .unwrap();
    let NotificationPayload::UserAssociated(p) = &n.notification else {
        panic!()
    };
    assert_eq!(p.associated_users[0].id_hash.as_deref(), Some("h"));
}

#[test]
fn notification_test_subscription_and_unknown() {
    let n = parse_notification(
        br#"{"notification":{},"notificationId":"t","notificationType":"TEST_NOTIFICATION","uId":"2049025000431439"}"#,
    )
    .unwrap();
    assert_eq!(n.notification, NotificationPayload::Test);
    assert_eq!(n.event_id(), None);

    let n = parse_notification(
        br#"{"notification":{"parentAdamId":1,"adamId":2,"counts":{"available":{"renewing":1,"expiring":0},
        "total":{"renewing":2,"expiring":0}}},"notificationId":"s","notificationType":"SUBSCRIPTION_COUNT","uId":"1"}"#,
    )
    .unwrap();
    assert_eq!(n.notification_type, NotificationType::SubscriptionCount);
    assert!(matches!(n.notification, NotificationPayload::Other(_)));

    let n = parse_notification(
        br#"{"notification":{"whatever":1},"notificationId":"u","notificationType":"UNLIMITED_ASSET","uId":"1"}"#,
    )
    .unwrap();
    assert_eq!(n.notification_type, NotificationType::UnlimitedAsset);

    let n = parse_notification(
        br#"{"notification":{"x":[]},"notificationId":"u","notificationType":"BRAND_NEW","uId":"1","extra":true}"#,
    )
    .unwrap();
    assert_eq!(n.notification_type, NotificationType::Unknown);
    assert_eq!(n.notification_type_raw, "BRAND_NEW");
}

#[test]
fn notification_errors_name_the_field() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "not JSON"),
        (b"\"x\"", "not a JSON object"),
        (br#"{"notificationId":"n","uId":"1","notification":{}}"#, "notificationType"),
        (br#"{"notificationId":"n","notificationType":"TEST_NOTIFICATION","notification":{}}"#, "uId"),
        (br#"{"notificationId":5,"notificationType":"TEST_NOTIFICATION","uId":"1","notification":{}}"#, "notificationId"),
        (br#"{"notificationId":"n","notificationType":"ASSET_COUNT","uId":"1"}"#, "notification: missing"),
        (br#"{"notificationId":"n","notificationType":"ASSET_COUNT","uId":"1","notification":[]}"#, "notification: expected an object"),
        (br#"{"notificationId":"n","notificationType":"ASSET_MANAGEMENT","uId":"1","notification":{"eventId":"e","type":"ASSOCIATE"}}"#, "result"),
        (br#"{"notificationId":"n","notificationType":"ASSET_MANAGEMENT","uId":"1","notification":{"eventId":"e","result":"SUCCESS","type":"ASSOCIATE","assignments":[{"pricingParam":"STDQ"}]}}"#, "notification.assignments[0]"),
        (br#"{"notificationId":"n","notificationType":"ASSET_COUNT","uId":"1","notification":{"adamId":[1]}}"#, "notification.adamId"),
    ];
    for (body, needle) in cases {
        let e = parse_notification(body).unwrap_err().to_string();
        assert!(
            e.contains(needle),
            "{:?}: {e:?} lacks {needle:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn write_requests_serialize_as_apple_expects() {
    let r: ManageAssetsRequest = serde_json::from_value(json!({
        "assets":[{"adamId":"1","pricingParam":"STDQ"}], "serialNumbers":["s1"]
    }))
    .unwrap();
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(
        v,
        json!({"assets":[{"adamId":"1","pricingParam":"STDQ"}],"serialNumbers":["s1"]})
    );
    assert_eq!(r.num_entities(), 1);
    let u: ManageUsersRequest = serde_json::from_value(json!({
        "users":[{"clientUserId":"a","email":"a@x","managedAppleId":"a@m"}]
    }))
    .unwrap();
    assert_eq!(
        serde_json::to_value(&u).unwrap()["users"][0]["managedAppleId"],
        "a@m"
    );
    let r: RevokeAssetsRequest = serde_json::from_value(json!({"clientUserIds":["u"]})).unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"clientUserIds":["u"]})
    );
}

#[test]
fn a_malformed_record_is_skipped_not_fatal() {
    // One assignment without adamId among good ones: the page still decodes.
    let page: vpp_reconciler::apple::model::GetAssignmentsResponse =
        serde_json::from_value(json!({
            "assignments": [
                {"adamId": "1", "pricingParam": "STDQ", "serialNumber": "a"},
                {"pricingParam": "STDQ", "serialNumber": "b"},
                {"adamId": 2, "pricingParam": "STDQ", "clientUserId": "u"}
            ],
            "currentPageIndex": 0, "size": 3, "totalPages": 1, "versionId": "v1",
            "tokenExpirationDate": "2030-11-08T22:33:22+0000", "uId": "2049025000431439"
        }))
        .unwrap();
    assert_eq!(page.assignments.len(), 2);
    assert_eq!(page.assignments[1].adam_id, "2");
}
