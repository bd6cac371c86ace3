use super::*;

#[test]
fn two_names_for_one_content_token_share_a_gate() {
    let c = AppleClient::new(ClientOptions::default()).unwrap();
    c.set_token("a", Secret::new("same"), None);
    c.set_token("b", Secret::new("same"), None);
    c.set_token("c", Secret::new("other"), None);
    let t = lock(&c.inner.tokens);
    assert!(Arc::ptr_eq(&t["a"], &t["b"]));
    assert!(!Arc::ptr_eq(&t["a"], &t["c"]));
    drop(t);
    // A new file for "b" splits it off again.
    c.set_token("b", Secret::new("renewed"), None);
    let t = lock(&c.inner.tokens);
    assert!(!Arc::ptr_eq(&t["a"], &t["b"]));
    assert_eq!(lock(&t["a"].state).stoken, Secret::new("same"));
}

#[test]
fn service_config_urls_stay_on_the_base_site() {
    let u = |s: &str| Url::parse(s).unwrap();
    let apple = u("https://vpp.itunes.apple.com/mdm/v2/");
    assert!(same_site(
        &apple,
        &u("https://vpp2.itunes.apple.com/mdm/v2/assets")
    ));
    assert!(!same_site(
        &apple,
        &u("https://evil.example.com/mdm/v2/assets")
    ));
    let local = u("http://127.0.0.1:8790/mdm/v2/");
    assert!(same_site(&local, &u("http://127.0.0.1:8790/mdm/v2/status")));
    // Another port on the same host is fine; another host is not.
    assert!(same_site(&local, &u("http://127.0.0.1:9999/mdm/v2/status")));
    assert!(!same_site(&local, &u("http://10.0.0.1:8790/mdm/v2/status")));
    assert!(!same_site(
        &local,
        &u("https://vpp.itunes.apple.com/mdm/v2/status")
    ));
}
