use super::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

#[derive(Clone, Debug, PartialEq, Eq)]
struct R(u32, &'static str);
impl Record for R {
    type Key = u32;
    fn key(&self) -> u32 {
        self.0
    }
}

/// A fake paginated server: `data` split in pages of `size`; `version` per call.
struct Fake {
    data: Mutex<Vec<u32>>,
    size: usize,
    calls: AtomicU32,
    /// Calls (0-based) after which the version changes and `grow` items are appended.
    churn_at: Vec<u32>,
    grow: u32,
    fail_page: Option<(u32, ApiError)>,
}

impl Fake {
    fn new(n: u32, size: usize) -> Fake {
        Fake {
            data: Mutex::new((0..n).collect()),
            size,
            calls: AtomicU32::new(0),
            churn_at: vec![],
            grow: 0,
            fail_page: None,
        }
    }
    fn page(&self, i: u32) -> Result<Page<R>, ApiError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some((p, e)) = &self.fail_page {
            if *p == i {
                return Err(e.clone());
            }
        }
        let churns = self.churn_at.iter().filter(|&&c| c < call).count();
        let mut data = self.data.lock().unwrap();
        if self.churn_at.contains(&call) {
            let start = data.len() as u32;
            data.extend(start..start + self.grow);
        }
        let total = data.len().div_ceil(self.size).max(1) as u32;
        if i >= total {
            return Err(ApiError::Apple {
                number: 9650,
                message: "out of range".into(),
                http_status: 400,
            });
        }
        let recs = data
            .iter()
            .skip(i as usize * self.size)
            .take(self.size)
            .map(|&n| R(n, "x"))
            .collect();
        Ok(Page::of(
            recs,
            i,
            (i + 1 < total).then_some(i + 1),
            Some(total),
            Some(format!("v{churns}")),
        ))
    }
}

fn run<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn simple_traversal() {
    let fake = Fake::new(2_500, 1_000);
    let t = run(traverse(|i| std::future::ready(fake.page(i)), 5, false)).unwrap();
    assert_eq!(t.records.len(), 2_500);
    assert_eq!(t.pages, 3);
    assert!(t.consistent);
    assert_eq!(t.version_id.as_deref(), Some("v0"));
}

#[test]
fn empty_set_is_one_page() {
    let fake = Fake::new(0, 100);
    let t = run(traverse(|i| std::future::ready(fake.page(i)), 5, true)).unwrap();
    assert!(t.records.is_empty() && t.consistent && t.incremental);
}

#[test]
fn growth_mid_traversal_is_followed_and_rerun() {
    let mut fake = Fake::new(250, 100);
    fake.churn_at = vec![1]; // during the first pass: version changes, 120 more records
    fake.grow = 120;
    let t = run(traverse(|i| std::future::ready(fake.page(i)), 5, false)).unwrap();
    // Second pass is stable and sees everything.
    assert!(t.consistent);
    assert_eq!(t.records.len(), 370);
    assert_eq!(t.version_id.as_deref(), Some("v1"));
}

#[test]
fn version_only_churn_with_stable_records_is_consistent() {
    let mut fake = Fake::new(300, 100);
    fake.churn_at = (0..100).collect();
    let t = run(traverse(|i| std::future::ready(fake.page(i)), 5, false)).unwrap();
    assert!(t.consistent, "same records twice: a stable set");
    assert_eq!(t.records.len(), 300);
}

#[test]
fn persistent_churn_returns_union_inconsistent() {
    let mut fake = Fake::new(300, 100);
    fake.churn_at = (0..100).collect();
    fake.grow = 1;
    let t = run(traverse(|i| std::future::ready(fake.page(i)), 5, false)).unwrap();
    assert!(!t.consistent);
    let mut keys: Vec<u32> = t.records.iter().map(|r| r.0).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), t.records.len(), "deduplicated");
    assert!(fake.calls.load(Ordering::SeqCst) >= 3 * 3);
}

#[test]
fn errors_propagate() {
    let mut fake = Fake::new(300, 100);
    fake.fail_page = Some((0, ApiError::InvalidVersion));
    let e = run(traverse(|i| std::future::ready(fake.page(i)), 5, true)).unwrap_err();
    assert_eq!(e, ApiError::InvalidVersion);
    let mut fake = Fake::new(300, 100);
    fake.fail_page = Some((2, ApiError::Timeout));
    let e = run(traverse(|i| std::future::ready(fake.page(i)), 5, true)).unwrap_err();
    assert_eq!(e, ApiError::Timeout);
}

#[test]
fn shrink_gives_out_of_range_and_rerun() {
    let fake = Fake::new(300, 100);
    let shrunk = std::sync::atomic::AtomicBool::new(false);
    let t = run(traverse(
        |i| {
            let r = fake.page(i);
            if i == 0 && !shrunk.swap(true, Ordering::SeqCst) {
                fake.data.lock().unwrap().truncate(150);
            }
            std::future::ready(r)
        },
        1,
        false,
    ))
    .unwrap();
    assert!(t.consistent);
    assert_eq!(t.records.len(), 150);
}

/// Three real pages, then a server that claims `totalPages` 1000: pages past the last
/// answer as `beyond` says. The pager stops at the page without `nextPageIndex`.
fn bogus_total(
    beyond: fn(u32) -> Result<Page<R>, ApiError>,
) -> impl Fn(u32) -> Result<Page<R>, ApiError> {
    move |i| match i {
        0..=2 => Ok(Page::of(
            (i * 10..i * 10 + 10).map(|n| R(n, "x")).collect(),
            i,
            (i < 2).then_some(i + 1),
            Some(1000),
            Some("v".into()),
        )),
        _ => beyond(i),
    }
}

#[test]
fn the_pager_stops_at_the_last_real_page_not_at_total_pages() {
    let empty = |i| {
        Ok(Page::of(
            vec![],
            i,
            Some(i + 1),
            Some(1000),
            Some("v".into()),
        ))
    };
    let out_of_range = |_| {
        Err(ApiError::Apple {
            number: 9650,
            message: "out of range".into(),
            http_status: 400,
        })
    };
    for beyond in [empty as fn(u32) -> _, out_of_range] {
        for concurrency in [1, 5] {
            let calls = AtomicU32::new(0);
            let page = bogus_total(beyond);
            let t = run(traverse(
                |i| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    std::future::ready(page(i))
                },
                concurrency,
                false,
            ))
            .unwrap();
            assert_eq!(t.records.len(), 30);
            assert_eq!(t.pages, 3);
            assert!(t.consistent, "the last page is not a sign of churn");
            let calls = calls.load(Ordering::SeqCst) as usize;
            // One pass; past the last page only what was already in flight.
            assert!(
                calls < 3 + concurrency,
                "{calls} calls at concurrency {concurrency}"
            );
            if concurrency == 1 {
                assert_eq!(calls, 3);
            }
        }
    }
}

#[test]
fn an_empty_page_ends_the_traversal() {
    // Page 1 is empty yet points further: nothing past it is read, and the pass proves
    // no removals.
    let calls = AtomicU32::new(0);
    let t = run(traverse(
        |i| {
            calls.fetch_add(1, Ordering::SeqCst);
            let recs = if i == 0 { vec![R(1, "x")] } else { vec![] };
            std::future::ready(Ok(Page::of(recs, i, Some(i + 1), None, Some("v".into()))))
        },
        5,
        false,
    ))
    .unwrap();
    assert_eq!(t.records, vec![R(1, "x")]);
    assert!(t.cut_short, "the read may be incomplete");
    // One pass of two pages: a re-run would not read further.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn undecodable_records_are_counted_and_named_with_their_page() {
    let body = |page: u32, next: Option<u32>| {
        serde_json::json!({
            "assignments": [
                {"adamId": "1", "pricingParam": "STDQ", "serialNumber": format!("ok-{page}")},
                {"adamId": "2", "pricingParam": "STDQ", "serialNumber": ["not", "a", "string"]},
            ],
            "currentPageIndex": page, "nextPageIndex": next, "totalPages": 2, "versionId": "v"
        })
    };
    let fetch = |i: u32| {
        let r: GetAssignmentsResponse =
            serde_json::from_value(body(i, (i == 0).then_some(1))).unwrap();
        std::future::ready(Ok(Page::from(r)))
    };
    let mut sink = Collect {
        records: Vec::new(),
    };
    let t = run(traverse_into(fetch, 5, false, &mut sink)).unwrap();
    assert_eq!(sink.records.len(), 2, "the good records are read");
    assert!(t.consistent, "undecodable is not churn: no re-run");
    assert!(!t.complete());
    assert_eq!(t.undecodable, 2);
    let first = &t.undecodable_samples[0];
    assert_eq!((first.page, first.index), (Some(0), 1));
    assert_eq!(first.id.as_deref(), Some("adamId=2"));
    assert!(first.detail.contains("serialNumber"), "{}", first.detail);
    assert_eq!(t.undecodable_samples[1].page, Some(1));
}

/// A sink that keeps only counts: what a streamed traversal holds is the pages in flight.
#[derive(Default)]
struct Counting {
    passes: u32,
    seen: Vec<u32>,
}

impl PageSink<R> for Counting {
    type Error = ();
    fn begin_pass(&mut self, pass: u32) -> impl Future<Output = Result<(), ()>> + Send {
        self.passes = pass;
        self.seen.clear();
        std::future::ready(Ok(()))
    }
    fn page(&mut self, records: Vec<R>) -> impl Future<Output = Result<(), ()>> + Send {
        self.seen.extend(records.iter().map(|r| r.0));
        std::future::ready(Ok(()))
    }
    fn digest(&mut self) -> impl Future<Output = Result<KeySetDigest, ()>> + Send {
        let mut d = KeySetDigest::default();
        let keys: HashSet<u32> = self.seen.iter().copied().collect();
        for k in keys {
            d.add(&k);
        }
        std::future::ready(Ok(d))
    }
}

#[test]
fn streamed_pages_arrive_in_order_and_a_rerun_starts_a_new_pass() {
    let fake = Fake::new(2_500, 100);
    let mut sink = Counting::default();
    let t = run(traverse_into(
        |i| std::future::ready(fake.page(i)),
        5,
        false,
        &mut sink,
    ))
    .unwrap();
    assert!(t.consistent);
    assert_eq!((t.pages, t.records, sink.passes), (25, 2_500, 1));
    assert_eq!(sink.seen, (0..2_500).collect::<Vec<_>>());

    let mut fake = Fake::new(250, 100);
    fake.churn_at = vec![1];
    fake.grow = 120;
    let mut sink = Counting::default();
    let t = run(traverse_into(
        |i| std::future::ready(fake.page(i)),
        5,
        false,
        &mut sink,
    ))
    .unwrap();
    assert!(t.consistent);
    assert_eq!(sink.passes, 2, "the inconsistent first pass was dropped");
    assert_eq!(sink.seen.len(), 370);
}

#[test]
fn a_sink_error_stops_the_traversal() {
    struct Failing;
    impl PageSink<R> for Failing {
        type Error = &'static str;
        fn begin_pass(&mut self, _: u32) -> impl Future<Output = Result<(), Self::Error>> + Send {
            std::future::ready(Ok(()))
        }
        fn page(&mut self, _: Vec<R>) -> impl Future<Output = Result<(), Self::Error>> + Send {
            std::future::ready(Err("disk full"))
        }
        fn digest(&mut self) -> impl Future<Output = Result<KeySetDigest, Self::Error>> + Send {
            std::future::ready(Ok(KeySetDigest::default()))
        }
    }
    let fake = Fake::new(300, 100);
    let e = run(traverse_into(
        |i| std::future::ready(fake.page(i)),
        5,
        false,
        &mut Failing,
    ))
    .unwrap_err();
    assert_eq!(e, StreamError::Sink("disk full"));
    let calls = fake.calls.load(Ordering::SeqCst);
    assert!(
        calls as usize <= MAX_PAGE_CONCURRENCY + QUEUED_PAGES,
        "fetching stops within the page slots: {calls} calls"
    );
}

#[test]
fn users_live_entry_wins() {
    let u = |status| ResponseUser {
        client_user_id: "a".into(),
        email: None,
        id_hash: None,
        invite_code: None,
        managed_apple_id: None,
        status,
    };
    let out = dedupe(vec![u(UserStatus::Associated), u(UserStatus::Retired)]);
    assert_eq!(out, vec![u(UserStatus::Associated)]);
    let out = dedupe(vec![u(UserStatus::Retired), u(UserStatus::Registered)]);
    assert_eq!(out, vec![u(UserStatus::Registered)]);
}
