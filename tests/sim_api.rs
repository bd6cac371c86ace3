//! The Apple API simulator, exercised over HTTP in-process (plus one run of the real binary).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use vpp_reconciler::sim::{serve, SimOptions};

struct Sim {
    base: String,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Sim {
    let sim = start_plain().await;
    // Tests poll quickly; only a few tests exercise Apple's limit.
    sim.put("limits", json!({"maxRequestPerSecond": 100000}))
        .await;
    sim
}

/// With Apple's example limits.
async fn start_plain() -> Sim {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, SimOptions { seed: 7 }, async {
        let _ = rx.await;
    }));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Sim {
        base: format!("http://{addr}"),
        http,
        _stop: tx,
    }
}

impl Sim {
    async fn location(&self, body: Value) -> (String, String) {
        let r = self
            .http
            .post(format!("{}/_sim/locations", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        (
            v["uId"].as_str().unwrap().to_string(),
            v["sToken"].as_str().unwrap().to_string(),
        )
    }

    async fn get(&self, tok: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/mdm/v2/{path}", self.base))
            .bearer_auth(tok)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn get_h(&self, tok: &str, path: &str) -> (u16, HeaderMap, Value) {
        let r = self
            .http
            .get(format!("{}/mdm/v2/{path}", self.base))
            .bearer_auth(tok)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let h = r.headers().clone();
        (s, h, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, tok: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/mdm/v2/{path}", self.base))
            .bearer_auth(tok)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn put(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .put(format!("{}/_sim/{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    async fn control(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/_sim/{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls Event Status until the event leaves PENDING.
    async fn wait_event(&self, tok: &str, id: &str) -> Value {
        for _ in 0..200 {
            let (s, v) = self.get(tok, &format!("status/{id}")).await;
            assert_eq!(s, 200, "{v}");
            if v["eventStatus"] != "PENDING" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("event {id} still pending");
    }

    async fn write(&self, tok: &str, path: &str, body: Value) -> Value {
        let (s, v) = self.post(tok, path, body).await;
        assert_eq!(s, 200, "{v}");
        let id = v["eventId"].as_str().unwrap().to_string();
        self.wait_event(tok, &id).await
    }
}

fn fast() -> Value {
    json!({"processingDelay": "10ms"})
}

fn app(adam: &str, total: i64) -> Value {
    json!({"adamId": adam, "pricingParam": "STDQ", "productType": "App", "total": total,
           "deviceAssignable": true, "revocable": true})
}

fn serials(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("SN{i:05}")).collect()
}

fn assert_err(resp: &(u16, Value), status: u16, number: i64) {
    assert_eq!(resp.0, status, "{}", resp.1);
    assert_eq!(resp.1["errorNumber"], number, "{}", resp.1);
    assert!(resp.1["errorMessage"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn location_token_and_service_config() {
    let sim = start_plain().await;
    let (uid, tok) = sim
        .location(json!({"name": "Acme", "assets": [app("1", 5)]}))
        .await;
    assert!(uid.chars().all(|c| c.is_ascii_digit()) && !uid.is_empty());
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&tok)
        .unwrap();
    let inner: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(inner["orgName"], "Acme");
    assert!(inner["token"].as_str().unwrap().len() > 20);
    let exp = inner["expDate"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_str(exp, "%Y-%m-%dT%H:%M:%S%z").is_ok()
            && exp.ends_with("+0000"),
        "{exp}"
    );

    // Service Config needs no auth.
    let v: Value = sim
        .http
        .get(format!("{}/mdm/v2/service/config", sim.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["limits"]["maxRequestPerSecond"], 15);
    assert_eq!(v["limits"]["maxAssets"], 25);
    assert_eq!(
        v["urls"]["getAssets"],
        format!("{}/mdm/v2/assets", sim.base)
    );
    assert_eq!(
        v["urls"]["eventStatus"],
        format!("{}/mdm/v2/status", sim.base)
    );
    assert!(v["errorCodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["errorNumber"] == 9709));
    assert!(v["notificationTypes"]
        .as_array()
        .unwrap()
        .contains(&json!("ASSET_MANAGEMENT")));

    let (s, v) = sim.get(&tok, "assets").await;
    assert_eq!(s, 200);
    assert_eq!(v["uId"], uid);
    assert_eq!(v["tokenExpirationDate"], exp);
    assert_eq!(v["assets"][0]["totalCount"], 5);
    assert_eq!(v["assets"][0]["availableCount"], 5);
    assert!(v.get("mdmInfo").is_none());
}

#[tokio::test]
async fn auth_errors() {
    let sim = start().await;
    let (uid, tok) = sim.location(json!({})).await;
    let r = sim
        .http
        .get(format!("{}/mdm/v2/assets", sim.base))
        .send()
        .await
        .unwrap();
    assert_err(&(r.status().as_u16(), r.json().await.unwrap()), 401, 9722);
    let r = sim
        .http
        .get(format!("{}/mdm/v2/assets", sim.base))
        .header("authorization", format!("Basic {tok}"))
        .send()
        .await
        .unwrap();
    assert_err(&(r.status().as_u16(), r.json().await.unwrap()), 401, 9722);
    assert_err(&sim.get("bm9wZQ==", "assets").await, 401, 9622);
    sim.put("faults", json!({"errorsWithHttp200": true})).await;
    assert_err(&sim.get("bm9wZQ==", "assets").await, 200, 9622);
    sim.put(
        "faults",
        json!({"errorsWithHttp200": false, "tokenState": {uid.clone(): "expired"}}),
    )
    .await;
    assert_err(&sim.get(&tok, "assets").await, 401, 9621);
    sim.put("faults", json!({"tokenState": {uid.clone(): "revoked"}}))
        .await;
    assert_err(&sim.get(&tok, "assets").await, 401, 9625);
    sim.put("faults", json!({"tokenState": {uid: "valid"}}))
        .await;
    assert_eq!(sim.get(&tok, "assets").await.0, 200);
    // A token whose expDate has passed is expired.
    let (_, old) = sim
        .location(json!({"expDate": "2020-01-01T00:00:00+0000"}))
        .await;
    assert_err(&sim.get(&old, "users").await, 401, 9621);
}

#[tokio::test]
async fn method_content_type_and_bad_json() {
    let sim = start().await;
    let (_, tok) = sim.location(json!({"assets": [app("1", 5)]})).await;
    let r = sim
        .http
        .delete(format!("{}/mdm/v2/assets", sim.base))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_err(&(r.status().as_u16(), r.json().await.unwrap()), 405, 9726);
    let r = sim
        .http
        .get(format!("{}/mdm/v2/assets/associate", sim.base))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_err(&(r.status().as_u16(), r.json().await.unwrap()), 405, 9726);
    let r = sim
        .http
        .post(format!("{}/mdm/v2/assets/associate", sim.base))
        .bearer_auth(&tok)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_err(&(r.status().as_u16(), r.json().await.unwrap()), 415, 9727);
    for body in [
        "{",
        "[]",
        r#"{"assets": [{"adamId": 1}]}"#,
        r#"{"assets": "x"}"#,
    ] {
        let r = sim
            .http
            .post(format!("{}/mdm/v2/assets/associate", sim.base))
            .bearer_auth(&tok)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_err(&(r.status().as_u16(), r.json().await.unwrap()), 400, 9602);
    }
    assert_err(&sim.get(&tok, "assets?pageIndex=abc").await, 400, 9602);
    assert_err(&sim.get(&tok, "assets?revocable=maybe").await, 400, 9602);
}

#[tokio::test]
async fn synchronous_validation_codes() {
    let sim = start().await;
    let book = json!({"adamId": "B1", "pricingParam": "STDQ", "productType": "Book", "total": 5});
    let (_, tok) = sim.location(json!({"assets": [app("1", 5), book]})).await;
    let a1 = json!([{"adamId": "1", "pricingParam": "STDQ"}]);
    let many_assets: Vec<Value> = (0..26)
        .map(|i| json!({"adamId": format!("{i}"), "pricingParam": "STDQ"}))
        .collect();
    let users = |n: usize| (0..n).map(|i| format!("u{i}")).collect::<Vec<_>>();
    let cases: Vec<(&str, Value, i64)> = vec![
        ("assets/associate", json!({"serialNumbers": ["s"]}), 9718),
        (
            "assets/associate",
            json!({"assets": [], "serialNumbers": ["s"]}),
            9718,
        ),
        ("assets/associate", json!({"assets": a1}), 9719),
        (
            "assets/associate",
            json!({"assets": many_assets, "serialNumbers": ["s"]}),
            9700,
        ),
        (
            "assets/associate",
            json!({"assets": a1, "clientUserIds": users(1001)}),
            9701,
        ),
        (
            "assets/associate",
            json!({"assets": a1, "serialNumbers": serials(1001)}),
            9702,
        ),
        (
            "assets/associate",
            json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}, {"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": ["s"]}),
            9703,
        ),
        (
            "assets/associate",
            json!({"assets": a1, "clientUserIds": ["u", "u"]}),
            9704,
        ),
        (
            "assets/associate",
            json!({"assets": a1, "serialNumbers": ["s", "s"]}),
            9705,
        ),
        (
            "assets/associate",
            json!({"assets": [{"adamId": "B1", "pricingParam": "STDQ"}], "serialNumbers": ["s"]}),
            9707,
        ),
        (
            "assets/disassociate",
            json!({"assets": [{"adamId": "B1", "pricingParam": "STDQ"}], "clientUserIds": ["u"]}),
            9706,
        ),
        ("assets/revoke", json!({}), 9719),
        ("assets/revoke", json!({"clientUserIds": users(101)}), 9701),
        (
            "assets/revoke",
            json!({"serialNumbers": serials(101)}),
            9702,
        ),
        ("users/create", json!({}), 9720),
        ("users/create", json!({"users": []}), 9720),
        (
            "users/create",
            json!({"users": users(101).iter().map(|u| json!({"clientUserId": u})).collect::<Vec<_>>()}),
            9714,
        ),
        (
            "users/create",
            json!({"users": [{"clientUserId": "a"}, {"clientUserId": "a"}]}),
            9715,
        ),
        (
            "users/create",
            json!({"users": [{"clientUserId": "a", "email": "not-an-email"}]}),
            9717,
        ),
        (
            "users/update",
            json!({"users": [{"clientUserId": "a", "email": "x@y"}]}),
            9717,
        ),
        ("users/retire", json!({"users": [{"email": "a@b.c"}]}), 9602),
    ];
    for (path, body, code) in cases {
        let r = sim.post(&tok, path, body.clone()).await;
        assert_err(&r, 400, code);
        if code == 9707 || code == 9706 {
            assert_eq!(r.1["errorInfo"]["assets"][0]["adamId"], "B1");
        }
    }
    // Nothing was queued.
    let truth = sim
        .control(&format!("truth/{}", sim.location(json!({})).await.0))
        .await;
    assert_eq!(truth["events"], json!([]));
}

#[tokio::test]
async fn associate_partial_failure_and_counts() {
    let sim = start().await;
    sim.put("faults", fast()).await;
    let (uid, tok) = sim.location(json!({"assets": [app("1", 3)]})).await;
    let body =
        json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": serials(5)});
    let st = sim.write(&tok, "assets/associate", body).await;
    assert_eq!(st["eventStatus"], "FAILED");
    assert_eq!(st["eventType"], "ASSOCIATE");
    assert_eq!(st["numRequested"], 5);
    assert_eq!(st["numCompleted"], 3);
    assert_eq!(st["uId"], uid);
    let f = &st["failures"][0];
    assert_eq!(f["errorNumber"], 9709);
    assert_eq!(
        f["errorInfo"]["serialNumbers"],
        json!(["SN00003", "SN00004"])
    );
    assert_eq!(
        f["errorInfo"]["assets"],
        json!([{"adamId": "1", "pricingParam": "STDQ"}])
    );
    let (_, a) = sim.get(&tok, "assets").await;
    assert_eq!(a["assets"][0]["assignedCount"], 3);
    assert_eq!(a["assets"][0]["availableCount"], 0);
    // Re-associating an existing assignment succeeds without a licence.
    let body =
        json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": ["SN00000"]});
    assert_eq!(
        sim.write(&tok, "assets/associate", body).await["eventStatus"],
        "COMPLETE"
    );
    // Disassociate frees one; then one more fits.
    let body =
        json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": ["SN00001"]});
    let st = sim.write(&tok, "assets/disassociate", body).await;
    assert_eq!(
        (st["eventStatus"].clone(), st["numCompleted"].clone()),
        (json!("COMPLETE"), json!(1))
    );
    let body =
        json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": ["SN00009"]});
    assert_eq!(
        sim.write(&tok, "assets/associate", body).await["eventStatus"],
        "COMPLETE"
    );
    let truth = sim.control(&format!("truth/{uid}")).await;
    assert_eq!(truth["assets"][0]["assignedCount"], 3);
    assert_eq!(truth["assignments"].as_array().unwrap().len(), 3);
    assert_eq!(truth["events"].as_array().unwrap().len(), 4);
    assert_eq!(truth["events"][0]["numCompleted"], 3);
    assert_eq!(
        truth["assignments"][0],
        json!({"adamId": "1", "pricingParam": "STDQ", "serialNumber": "SN00000"})
    );
}

#[tokio::test]
async fn users_9609_9716_retire_and_revoke() {
    let sim = start().await;
    sim.put("faults", fast()).await;
    let (uid, tok) = sim
        .location(json!({"assets": [app("1", 10), app("2", 10)],
                         "users": [{"clientUserId": "u1", "email": "u1@example.com"}]}))
        .await;
    let assets =
        json!([{"adamId": "1", "pricingParam": "STDQ"}, {"adamId": "2", "pricingParam": "STDQ"}]);
    let st = sim
        .write(
            &tok,
            "assets/associate",
            json!({"assets": assets, "clientUserIds": ["u1", "ghost"]}),
        )
        .await;
    assert_eq!(st["eventStatus"], "FAILED");
    assert_eq!(
        (st["numRequested"].clone(), st["numCompleted"].clone()),
        (json!(4), json!(2))
    );
    assert_eq!(st["failures"][0]["errorNumber"], 9609);
    assert_eq!(
        st["failures"][0]["errorInfo"],
        json!({"clientUserIds": ["ghost"]})
    );

    let st = sim.write(&tok, "users/create", json!({"users": [{"clientUserId": "u1"}, {"clientUserId": "u2", "email": "u2@example.com"}]})).await;
    assert_eq!(st["eventType"], "CREATE");
    assert_eq!(
        (st["eventStatus"].clone(), st["numCompleted"].clone()),
        (json!("FAILED"), json!(1))
    );
    assert_eq!(st["failures"][0]["errorNumber"], 9716);
    let (_, u) = sim.get(&tok, "users?clientUserId=u2").await;
    assert_eq!(u["users"][0]["status"], "Registered");
    assert!(u["users"][0]["inviteCode"].as_str().is_some());

    // Revoke removes every revocable assignment of u1.
    let st = sim
        .write(&tok, "assets/revoke", json!({"clientUserIds": ["u1"]}))
        .await;
    assert_eq!(
        (st["eventStatus"].clone(), st["eventType"].clone()),
        (json!("COMPLETE"), json!("REVOKE"))
    );
    let truth = sim.control(&format!("truth/{uid}")).await;
    assert_eq!(truth["assignments"], json!([]));
    assert_eq!(truth["assets"][0]["assignedCount"], 0);

    // Retire removes assignments and marks the user Retired; u1 can then be created again.
    sim.write(
        &tok,
        "assets/associate",
        json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "clientUserIds": ["u1"]}),
    )
    .await;
    let st = sim
        .write(
            &tok,
            "users/retire",
            json!({"users": [{"clientUserId": "u1"}]}),
        )
        .await;
    assert_eq!(st["eventStatus"], "COMPLETE");
    let truth = sim.control(&format!("truth/{uid}")).await;
    assert_eq!(truth["assignments"], json!([]));
    assert_eq!(truth["assets"][0]["availableCount"], 10);
    assert_eq!(truth["users"][0]["status"], "Retired");
    assert_eq!(
        sim.write(
            &tok,
            "users/create",
            json!({"users": [{"clientUserId": "u1"}]})
        )
        .await["eventStatus"],
        "COMPLETE"
    );
    let (_, u) = sim.get(&tok, "users?clientUserId=u1").await;
    assert_eq!(u["users"].as_array().unwrap().len(), 2);
    let (_, u) = sim.get(&tok, "users?activeOnly=true").await;
    assert_eq!(u["users"].as_array().unwrap().len(), 2);
    let (_, u) = sim.get(&tok, "users?retiredOnly=true").await;
    assert_eq!(u["users"].as_array().unwrap().len(), 1);
    let st = sim
        .write(
            &tok,
            "users/update",
            json!({"users": [{"clientUserId": "nobody", "email": "n@example.com"}]}),
        )
        .await;
    assert_eq!(st["failures"][0]["errorNumber"], 9609);
}

#[tokio::test]
async fn event_status_pending_then_complete_and_9708() {
    let sim = start().await;
    sim.put("faults", json!({"processingDelay": "300ms"})).await;
    let (_, tok) = sim.location(json!({"assets": [app("1", 10)]})).await;
    let (s, v) = sim
        .post(
            &tok,
            "assets/associate",
            json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": ["a"]}),
        )
        .await;
    assert_eq!(s, 200);
    assert!(v["tokenExpirationDate"].is_string() && v["uId"].is_string());
    let id = v["eventId"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok());
    let (_, st) = sim.get(&tok, &format!("status/{id}")).await;
    assert_eq!(st["eventStatus"], "PENDING");
    assert_eq!(
        (st["numRequested"].clone(), st["numCompleted"].clone()),
        (json!(1), json!(0))
    );
    let st = sim.wait_event(&tok, id).await;
    assert_eq!(st["eventStatus"], "COMPLETE");
    assert_eq!(st["failures"], json!([]));
    let (_, st) = sim.get(&tok, &format!("status?eventId={id}")).await;
    assert_eq!(st["numCompleted"], 1);
    assert_err(
        &sim.get(&tok, "status/00000000-0000-0000-0000-000000000000")
            .await,
        400,
        9708,
    );
    // Another location's event is unknown here.
    let (_, other) = sim.location(json!({})).await;
    assert_err(&sim.get(&other, &format!("status/{id}")).await, 400, 9708);
}

#[tokio::test]
async fn pagination_and_incremental_sync() {
    let sim = start().await;
    sim.put("faults", fast()).await;
    let (_, tok) = sim
        .location(json!({"assets": [app("1", 2000)], "pageSize": 100}))
        .await;
    let st = sim
        .write(&tok, "assets/associate", json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": serials(1000)}))
        .await;
    assert_eq!(st["numCompleted"], 1000);
    let mut seen = Vec::new();
    let mut page = 0;
    let mut first_version = None;
    loop {
        let (s, v) = sim
            .get(&tok, &format!("assignments?pageIndex={page}"))
            .await;
        assert_eq!(s, 200);
        assert_eq!(v["currentPageIndex"], page);
        assert_eq!(v["totalPages"], 10);
        assert_eq!(v["size"], 100);
        first_version.get_or_insert(v["versionId"].clone());
        assert_eq!(Some(&v["versionId"]), first_version.as_ref());
        for a in v["assignments"].as_array().unwrap() {
            seen.push(a["serialNumber"].as_str().unwrap().to_string());
        }
        match v.get("nextPageIndex") {
            Some(n) => page = n.as_i64().unwrap(),
            None => break,
        }
    }
    assert_eq!(page, 9);
    assert_eq!(seen, serials(1000));
    assert_err(&sim.get(&tok, "assignments?pageIndex=10").await, 400, 9650);
    assert_err(&sim.get(&tok, "assignments?pageIndex=-1").await, 400, 9650);

    // Incremental: only what changed since; removals are not shown.
    let v0 = first_version.unwrap().as_str().unwrap().to_string();
    let (_, v) = sim
        .get(&tok, &format!("assignments?sinceVersionId={v0}"))
        .await;
    assert_eq!(v["assignments"], json!([]));
    assert_eq!(v["totalPages"], 1);
    let st = sim.write(&tok, "assets/associate", json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": ["NEW1", "NEW2"]})).await;
    assert_eq!(st["eventStatus"], "COMPLETE");
    let (_, v) = sim
        .get(&tok, &format!("assignments?sinceVersionId={v0}"))
        .await;
    assert_eq!(v["assignments"].as_array().unwrap().len(), 2);
    let v1 = v["versionId"].as_str().unwrap().to_string();
    assert_ne!(v1, v0);
    sim.write(
        &tok,
        "assets/disassociate",
        json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": ["NEW1"]}),
    )
    .await;
    let (_, v) = sim
        .get(&tok, &format!("assignments?sinceVersionId={v1}"))
        .await;
    assert_eq!(v["assignments"], json!([]));
    assert_ne!(v["versionId"], json!(v1));
    let (_, v) = sim.get(&tok, "assignments?serialNumber=NEW2").await;
    assert_eq!(v["assignments"].as_array().unwrap().len(), 1);
    assert_err(
        &sim.get(&tok, "assignments?sinceVersionId=bogus").await,
        400,
        9721,
    );

    // Users: a retired user shows up in an incremental response.
    let (_, u) = sim.get(&tok, "users").await;
    let uv = u["versionId"].as_str().unwrap().to_string();
    sim.write(
        &tok,
        "users/create",
        json!({"users": [{"clientUserId": "x"}]}),
    )
    .await;
    let (_, u) = sim.get(&tok, &format!("users?sinceVersionId={uv}")).await;
    let uv2 = u["versionId"].as_str().unwrap().to_string();
    assert_eq!(u["users"][0]["status"], "Registered");
    sim.write(
        &tok,
        "users/retire",
        json!({"users": [{"clientUserId": "x"}]}),
    )
    .await;
    let (_, u) = sim.get(&tok, &format!("users?sinceVersionId={uv2}")).await;
    assert_eq!(
        u["users"],
        json!([{"clientUserId": "x", "inviteCode": u["users"][0]["inviteCode"], "status": "Retired"}])
    );
    assert_err(&sim.get(&tok, "users?sinceVersionId=nope").await, 400, 9721);
}

#[tokio::test]
async fn asset_filters_and_unlimited() {
    let sim = start().await;
    let free =
        json!({"adamId": "F", "pricingParam": "STDQ", "productType": "App", "unlimited": true});
    let book = json!({"adamId": "B", "pricingParam": "PLUS", "productType": "Book", "total": 2});
    let (_, tok) = sim
        .location(json!({"assets": [app("1", 5), free, book]}))
        .await;
    let (_, v) = sim.get(&tok, "assets").await;
    assert_eq!(v["assets"].as_array().unwrap().len(), 3);
    assert_eq!(v["assets"][1]["totalCount"], 2147483647);
    let (_, v) = sim.get(&tok, "assets?unlimited=true").await;
    assert_eq!(v["unlimitedAssets"][0]["adamId"], "F");
    assert!(v["unlimitedAssets"][0].get("totalCount").is_none());
    assert_eq!(v["assets"].as_array().unwrap().len(), 2);
    let (_, v) = sim.get(&tok, "assets?unlimited=false").await;
    assert_eq!(v["assets"].as_array().unwrap().len(), 2);
    assert!(v.get("unlimitedAssets").is_none());
    let (_, v) = sim.get(&tok, "assets?productType=Book").await;
    assert_eq!(v["assets"][0]["adamId"], "B");
    assert_eq!(v["assets"][0]["deviceAssignable"], false);
    let (_, v) = sim
        .get(
            &tok,
            "assets?pricingParam=STDQ&maxAvailableCount=5&minAvailableCount=5",
        )
        .await;
    assert_eq!(v["assets"].as_array().unwrap().len(), 1);
    let (_, v) = sim.get(&tok, "assets?adamId=1&revocable=true&deviceAssignable=true&minAssignedCount=0&maxAssignedCount=0").await;
    assert_eq!(v["assets"][0]["adamId"], "1");
    assert_err(&sim.get(&tok, "assets?productType=Movie").await, 400, 9602);
}

#[tokio::test]
async fn version_churn() {
    let sim = start().await;
    let (_, tok) = sim
        .location(json!({"users": [{"clientUserId": "a"}]}))
        .await;
    let (_, a) = sim.get(&tok, "users").await;
    let (_, b) = sim.get(&tok, "users").await;
    assert_eq!(a["versionId"], b["versionId"]);
    sim.put("faults", json!({"versionChurn": true})).await;
    let (_, c) = sim.get(&tok, "users").await;
    let (_, d) = sim.get(&tok, "users").await;
    assert_ne!(c["versionId"], d["versionId"]);
    assert_eq!(c["users"], d["users"]);
    // Churned versions stay valid and show no changes.
    let (s, e) = sim
        .get(
            &tok,
            &format!("users?sinceVersionId={}", c["versionId"].as_str().unwrap()),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(e["users"], json!([]));
}

/// A notification receiver: records (Authorization header, body); answers `status`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(String, Value)>>>,
}

async fn receiver(status: u16) -> Receiver {
    use axum::routing::post;
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let g = g.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                assert_eq!(ct, "application/json");
                g.lock()
                    .unwrap()
                    .push((auth, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    Receiver { url, got }
}

impl Receiver {
    fn all(&self) -> Vec<(String, Value)> {
        self.got.lock().unwrap().clone()
    }
    async fn wait_for(&self, n: usize) -> Vec<(String, Value)> {
        for _ in 0..300 {
            if self.got.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.all()
    }
}

#[tokio::test]
async fn notifications_client_config_chunks_and_faults() {
    let sim = start().await;
    sim.put("faults", fast()).await;
    let rx = receiver(200).await;
    let (uid, tok) = sim
        .location(json!({"assets": [app("1", 200)], "users": [{"clientUserId": "u1"}]}))
        .await;
    let cfg = json!({"notificationUrl": rx.url, "notificationAuthToken": "s3cret",
                     "notificationTypes": ["ASSET_MANAGEMENT", "USER_MANAGEMENT"],
                     "mdmInfo": {"id": "mdm-1", "name": "Test MDM", "metadata": "example"}});
    let (s, v) = sim.post(&tok, "client/config", cfg).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["subscribedNotificationTypes"],
        json!(["ASSET_MANAGEMENT", "USER_MANAGEMENT"])
    );
    assert_eq!(v["notificationUrl"], json!(rx.url));
    assert_eq!(v["mdmInfo"]["id"], "mdm-1");
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].0, "Bearer s3cret");
    assert_eq!(got[0].1["notificationType"], "TEST_NOTIFICATION");
    assert_eq!(got[0].1["uId"], uid);
    assert_eq!(got[0].1["notification"], json!({}));
    // mdmInfo now appears everywhere.
    let (_, g) = sim.get(&tok, "client/config").await;
    assert_eq!(g["mdmInfo"]["name"], "Test MDM");
    assert_eq!(sim.get(&tok, "users").await.1["mdmInfo"]["id"], "mdm-1");

    // 250 serials -> three SUCCESS chunks; 60 more than the licences left -> FAILURE chunk.
    let st = sim.write(&tok, "assets/associate", json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": serials(250)})).await;
    assert_eq!(
        (st["numCompleted"].clone(), st["eventStatus"].clone()),
        (json!(200), json!("FAILED"))
    );
    let got = rx.wait_for(1 + 3).await;
    assert_eq!(got.len(), 4);
    let mut ok = 0;
    let mut failed = 0;
    for (auth, n) in &got[1..] {
        assert_eq!(auth, "Bearer s3cret");
        assert_eq!(n["notificationType"], "ASSET_MANAGEMENT");
        assert!(uuid::Uuid::parse_str(n["notificationId"].as_str().unwrap()).is_ok());
        let p = &n["notification"];
        assert_eq!(p["eventId"], got[1].1["notification"]["eventId"]);
        assert!(p["eventId"].is_string());
        assert_eq!(p["type"], "ASSOCIATE");
        let len = p["assignments"].as_array().unwrap().len();
        assert!(len <= 100);
        if p["result"] == "SUCCESS" {
            ok += len;
        } else {
            assert_eq!(p["error"]["errorNumber"], 9709);
            assert_eq!(
                p["error"]["errorInfo"]["serialNumbers"]
                    .as_array()
                    .unwrap()
                    .len(),
                len
            );
            failed += len;
        }
    }
    assert_eq!((ok, failed), (200, 50));

    let before = rx.all().len();
    sim.write(
        &tok,
        "users/create",
        json!({"users": [{"clientUserId": "u9"}]}),
    )
    .await;
    let got = rx.wait_for(before + 1).await;
    let n = &got[before].1;
    assert_eq!(n["notificationType"], "USER_MANAGEMENT");
    assert_eq!(n["notification"]["type"], "CREATE");
    assert_eq!(n["notification"]["users"][0]["clientUserId"], "u9");

    // Drops: never sent.
    sim.put("faults", json!({"dropNotificationRate": 1.0}))
        .await;
    let before = rx.all().len();
    sim.write(
        &tok,
        "users/update",
        json!({"users": [{"clientUserId": "u9", "email": "u9@example.com"}]}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.all().len(), before);
    // Duplicates: same notificationId twice.
    sim.put(
        "faults",
        json!({"dropNotificationRate": 0.0, "duplicateNotificationRate": 1.0}),
    )
    .await;
    sim.write(
        &tok,
        "users/update",
        json!({"users": [{"clientUserId": "u9", "email": "u9@example.org"}]}),
    )
    .await;
    let got = rx.wait_for(before + 2).await;
    assert_eq!(got.len(), before + 2);
    assert_eq!(
        got[before].1["notificationId"],
        got[before + 1].1["notificationId"]
    );
    let stats = sim.control("stats").await;
    assert_eq!(stats["notifications"]["dropped"], 1);
    assert_eq!(stats["notifications"]["duplicated"], 1);
    assert_eq!(stats["notifications"]["sent"], (before + 1) as u64);
}

#[tokio::test]
async fn client_config_errors_and_sim_notify() {
    let sim = start().await;
    sim.put("faults", fast()).await;
    let down = receiver(500).await;
    let (uid, tok) = sim.location(json!({})).await;
    let cases = [
        (json!({"notificationUrl": down.url}), 9710),
        (
            json!({"notificationUrl": "https://x.example/a", "notificationAuthToken": "t".repeat(600)}),
            9711,
        ),
        (
            json!({"notificationUrl": "ftp://x.example/a", "notificationAuthToken": "t"}),
            9712,
        ),
        (
            json!({"notificationUrl": "http://x.example/a", "notificationAuthToken": "t"}),
            9712,
        ),
        (json!({"mdmInfo": {"id": "x", "name": "y"}}), 9723),
        (
            json!({"mdmInfo": {"id": "x".repeat(101), "name": "y", "metadata": "z"}}),
            9724,
        ),
        (
            json!({"mdmInfo": {"id": "x", "name": "y".repeat(101), "metadata": "z"}}),
            9725,
        ),
        (
            json!({"mdmInfo": {"id": "x", "name": "y", "metadata": "z".repeat(256)}}),
            9713,
        ),
        (json!({"notificationTypes": ["NOPE"]}), 9602),
        (
            json!({"notificationUrl": down.url, "notificationAuthToken": "t"}),
            9728,
        ),
    ];
    for (body, code) in cases {
        assert_err(&sim.post(&tok, "client/config", body).await, 400, code);
    }
    assert!(sim
        .get(&tok, "client/config")
        .await
        .1
        .get("notificationUrl")
        .is_none());
    // PUT /_sim/notify sets the target without a TEST_NOTIFICATION.
    let rx = receiver(200).await;
    sim.put(
        "notify",
        json!({"uId": uid, "url": rx.url, "authToken": "abc"}),
    )
    .await;
    let (_, g) = sim.get(&tok, "client/config").await;
    assert_eq!(g["notificationAuthToken"], "abc");
    sim.write(
        &tok,
        "users/create",
        json!({"users": [{"clientUserId": "a"}]}),
    )
    .await;
    let got = rx.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "Bearer abc");
    assert_eq!(got[0].1["notificationType"], "USER_MANAGEMENT");
}

#[tokio::test]
async fn rate_limit_429() {
    let sim = start().await;
    let limits = sim.put("limits", json!({"maxRequestPerSecond": 5})).await;
    assert_eq!(limits["maxRequestPerSecond"], 5);
    let (uid, tok) = sim.location(json!({})).await;
    let mut limited = 0;
    for _ in 0..8 {
        let r = sim.get(&tok, "assets").await;
        if r.0 == 429 {
            assert_err(&r, 429, 9646);
            limited += 1;
        }
    }
    assert!(limited >= 3, "{limited}");
    // Service Config is not counted.
    for _ in 0..10 {
        assert!(sim
            .http
            .get(format!("{}/mdm/v2/service/config", sim.base))
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sim.get(&tok, "users").await.0, 200);
    let stats = sim.control("stats").await;
    let t = &stats["tokens"][&uid];
    assert_eq!(t["rateLimitViolations"], limited);
    assert_eq!(t["requests"]["getAssets"], 8);
    assert_eq!(t["requests"]["getUsers"], 1);
    assert!(t["requests"].get("serviceConfig").is_none());
}

#[tokio::test]
async fn errors_5xx_with_retry_after() {
    let sim = start().await;
    let (uid, tok) = sim.location(json!({})).await;
    sim.put("faults", json!({"error5xxRate": 1.0, "retryAfter": "1s"}))
        .await;
    let (s, h, v) = sim.get_h(&tok, "assets").await;
    assert!(s == 503 || s == 500, "{s}");
    assert_eq!(v["errorNumber"], if s == 503 { 9729 } else { 9603 });
    assert_eq!(h.get("retry-after").unwrap(), "1");
    sim.put("faults", json!({"error5xxRate": 0.0})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Still inside the Retry-After window: refused again and counted.
    let (s, h, v) = sim.get_h(&tok, "assets").await;
    assert_eq!((s, v["errorNumber"].clone()), (503, json!(9729)));
    assert!(h.get("retry-after").is_some());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(sim.get(&tok, "assets").await.0, 200);
    let stats = sim.control("stats").await;
    assert_eq!(stats["tokens"][&uid]["requestsDuringRetryAfter"], 1);
    assert_eq!(stats["tokens"][&uid]["requests"]["getAssets"], 3);
}

#[tokio::test]
async fn truth_and_stats_shapes() {
    let sim = start().await;
    sim.put("faults", fast()).await;
    let (uid, tok) = sim.location(json!({"assets": [app("1", 2)], "users": [{"clientUserId": "u1", "email": "u1@example.com"}]})).await;
    sim.write(
        &tok,
        "assets/associate",
        json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "clientUserIds": ["u1"]}),
    )
    .await;
    let t = sim.control(&format!("truth/{uid}")).await;
    let keys: Vec<&String> = t.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["assets", "assignments", "events", "users"]);
    let ev = &t["events"][0];
    for k in [
        "eventId",
        "eventType",
        "eventStatus",
        "numRequested",
        "numCompleted",
        "failures",
    ] {
        assert!(ev.get(k).is_some(), "{k}");
    }
    for k in [
        "adamId",
        "assignedCount",
        "availableCount",
        "deviceAssignable",
        "pricingParam",
        "productType",
        "retiredCount",
        "revocable",
        "supportedPlatforms",
        "totalCount",
    ] {
        assert!(t["assets"][0].get(k).is_some(), "{k}");
    }
    assert_eq!(
        t["assignments"][0],
        json!({"adamId": "1", "pricingParam": "STDQ", "clientUserId": "u1"})
    );
    assert_eq!(t["users"][0]["clientUserId"], "u1");
    assert_eq!(t["users"][0]["email"], "u1@example.com");
    let (_, a) = sim.get(&tok, "assignments?includeUserState=true").await;
    assert_eq!(a["assignments"][0]["userStatus"], "Registered");
    let s = sim.control("stats").await;
    assert_eq!(s["tokens"][&uid]["requests"]["associateAssets"], 1);
    assert!(
        s["tokens"][&uid]["requests"]["eventStatus"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(s["tokens"][&uid]["rateLimitViolations"], 0);
    assert_eq!(s["tokens"][&uid]["requestsDuringRetryAfter"], 0);
    assert_eq!(
        s["notifications"],
        json!({"sent": 0, "dropped": 0, "duplicated": 0})
    );
    let r = sim
        .http
        .get(format!("{}/_sim/truth/999", sim.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn real_binary_prints_listening_line() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vpp-reconciler"))
        .args(["sim", "--listen", "127.0.0.1:0", "--seed", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("simulator listening on ")
        .unwrap()
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/mdm/v2/") && !url.contains(":0/"),
        "{url}"
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let v: Value = http
        .get(format!("{url}service/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["urls"]["getUsers"], format!("{url}users"));
    // SIGTERM ends it cleanly.
    #[cfg(unix)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    #[cfg(not(unix))]
    let _ = child.kill();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    #[cfg(unix)]
    assert!(status.success(), "{status}");
    let _ = status;
}

#[tokio::test]
async fn asset_count_and_user_associated_extras() {
    let sim = start().await;
    let rx = receiver(200).await;
    let (uid, tok) = sim
        .location(json!({"assets": [app("1", 5)], "users": [{"clientUserId": "u1"}]}))
        .await;
    // Listed in stats before any request.
    assert_eq!(
        sim.control("stats").await["tokens"][&uid]["rateLimitViolations"],
        0
    );
    sim.put(
        "notify",
        json!({"uId": uid, "url": rx.url, "authToken": "k"}),
    )
    .await;
    let (_, u0) = sim.get(&tok, "users").await;
    let r = sim
        .http
        .post(format!("{}/_sim/asset-count", sim.base))
        .json(&json!({"uId": uid, "adamId": "1", "countDelta": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["totalCount"], 8);
    let r = sim
        .http
        .post(format!("{}/_sim/associate-user", sim.base))
        .json(&json!({"uId": uid, "clientUserId": "u1"}))
        .send()
        .await
        .unwrap();
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["status"], "Associated");
    assert!(user["idHash"].is_string());
    let got = rx.wait_for(2).await;
    let by_type = |t: &str| {
        got.iter()
            .find(|(_, n)| n["notificationType"] == t)
            .map(|(_, n)| n["notification"].clone())
    };
    assert_eq!(
        by_type("ASSET_COUNT").unwrap(),
        json!({"adamId": "1", "countDelta": 3, "pricingParam": "STDQ"})
    );
    assert_eq!(
        by_type("USER_ASSOCIATED").unwrap()["associatedUsers"][0],
        user
    );
    let (_, u) = sim
        .get(
            &tok,
            &format!("users?sinceVersionId={}", u0["versionId"].as_str().unwrap()),
        )
        .await;
    assert_eq!(u["users"], json!([user]));
    let r = sim
        .http
        .post(format!("{}/_sim/asset-count", sim.base))
        .json(&json!({"uId": uid, "adamId": "1", "countDelta": -100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test]
async fn sustains_concurrent_load() {
    let sim = Arc::new(start().await);
    let (_, tok) = sim.location(json!({"assets": [app("1", 5)]})).await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (sim, tok) = (sim.clone(), tok.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..250 {
                assert_eq!(sim.get(&tok, "assets").await.0, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "2000 requests took {took:?}"
    );
    eprintln!("2000 requests in {took:?}");
}
