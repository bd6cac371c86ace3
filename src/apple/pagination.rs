//! Paginated traversal of Get Assets / Get Assignments / Get Users (docs/apple-api.md#pagination-and-versionid).
//!
//! Invariants:
//! - The end of data is the absence of `nextPageIndex`; `totalPages` is only a hint for which
//!   pages to fetch in parallel (at most 5 in flight, Apple's limit), after which the traversal
//!   keeps following `nextPageIndex` from the last page fetched (`totalPages` can grow).
//! - `version_id` is page 0's, the one Apple says to store as the next `sinceVersionId`.
//! - A traversal is `consistent` only if every page carried that same versionId and no page
//!   vanished underneath us (9650 after a shrink). Inconsistent traversals are re-run, up to
//!   [`MAX_ATTEMPTS`] in all; the last attempt's records are returned with `consistent: false`
//!   so the caller upserts only and re-syncs later.
//! - Records are deduplicated by identity, last occurrence wins (a record that moved between
//!   pages mid-traversal appears twice).

use std::collections::HashMap;
use std::collections::HashSet;
use std::future::Future;
use std::hash::Hash;

use futures::stream::{self, StreamExt};

use super::error::ApiError;
use super::model::{
    Assignee, Assignment, GetAssetsResponse, GetAssignmentsResponse, GetUsersResponse, PageInfo,
    PricingParam, ResponseAsset, ResponseUser, UserStatus,
};

/// Whole traversals attempted before settling for an inconsistent one.
pub const MAX_ATTEMPTS: u32 = 3;
/// Apple: "don't submit more than five requests simultaneously".
pub const MAX_PAGE_CONCURRENCY: usize = 5;
/// Guard against a server whose `nextPageIndex` never ends.
const MAX_PAGES: usize = 100_000;

/// The result of one traversal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traversal<T> {
    pub records: Vec<T>,
    /// Page 0's versionId (store it as the next `sinceVersionId`).
    pub version_id: Option<String>,
    /// Pages fetched in the returned attempt.
    pub pages: u32,
    /// Every page had the same versionId and none disappeared mid-traversal.
    pub consistent: bool,
    /// Fetched with `sinceVersionId`: `records` are changes, not the whole set.
    pub incremental: bool,
}

/// One page as the traversal needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub records: Vec<T>,
    pub current_page_index: Option<i64>,
    pub next_page_index: Option<u32>,
    pub total_pages: Option<u32>,
    pub version_id: Option<String>,
}

impl<T> Page<T> {
    fn new(records: Vec<T>, info: PageInfo) -> Page<T> {
        let idx = |v: Option<i64>| v.and_then(|n| u32::try_from(n).ok());
        Page {
            records,
            current_page_index: info.current_page_index,
            next_page_index: idx(info.next_page_index),
            total_pages: idx(info.total_pages),
            version_id: info.version_id,
        }
    }
}

impl From<GetAssetsResponse> for Page<ResponseAsset> {
    fn from(r: GetAssetsResponse) -> Self {
        Page::new(r.assets.into(), r.page)
    }
}
impl From<GetAssignmentsResponse> for Page<Assignment> {
    fn from(r: GetAssignmentsResponse) -> Self {
        Page::new(r.assignments.into(), r.page)
    }
}
impl From<GetUsersResponse> for Page<ResponseUser> {
    fn from(r: GetUsersResponse) -> Self {
        Page::new(r.users.into(), r.page)
    }
}

/// Identity of a record across pages.
pub trait Record {
    type Key: Eq + Hash + Clone;
    fn key(&self) -> Self::Key;
    /// Whether `self`, seen later, replaces `earlier` with the same key. Default: last wins.
    fn replaces(&self, _earlier: &Self) -> bool {
        true
    }
}

impl Record for ResponseAsset {
    type Key = (String, PricingParam);
    fn key(&self) -> Self::Key {
        (self.adam_id.clone(), self.pricing_param)
    }
}

impl Record for Assignment {
    type Key = (String, PricingParam, Assignee);
    fn key(&self) -> Self::Key {
        (self.adam_id.clone(), self.pricing_param, self.assignee())
    }
}

impl Record for ResponseUser {
    type Key = String;
    fn key(&self) -> Self::Key {
        self.client_user_id.clone()
    }
    /// Apple may list a clientUserId several times: retired entries plus at most one live
    /// (Registered/Associated) one. The live entry is the user's current state, so a retired
    /// duplicate never replaces it.
    fn replaces(&self, earlier: &Self) -> bool {
        let live =
            |u: &ResponseUser| matches!(u.status, UserStatus::Registered | UserStatus::Associated);
        live(self) || !live(earlier)
    }
}

fn is_out_of_range(e: &ApiError) -> bool {
    e.error_number() == Some(9650)
}

/// One pass over all pages. Returns the pages in index order and whether the pass saw a
/// single, stable data set.
async fn one_pass<T, F, Fut>(
    fetch: &F,
    concurrency: usize,
) -> Result<(Vec<Page<T>>, bool), ApiError>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<Page<T>, ApiError>>,
{
    let first = fetch(0).await?;
    let version = first.version_id.clone();
    let mut stable = true;
    let mut next = first.next_page_index;
    let total = first.total_pages.unwrap_or(1);
    let mut last_index = 0u32;
    let mut pages = vec![first];

    if next.is_some() && total > 1 {
        let mut s = stream::iter(1..total)
            .map(fetch)
            .buffered(concurrency.clamp(1, MAX_PAGE_CONCURRENCY));
        let mut index = 0u32;
        while let Some(r) = s.next().await {
            index += 1;
            match r {
                Ok(p) => {
                    if next.is_none() {
                        // An earlier page said it was the last, yet more came: data moved.
                        stable = false;
                    }
                    next = p.next_page_index;
                    last_index = index;
                    pages.push(p);
                }
                Err(e) if is_out_of_range(&e) => {
                    // The set shrank under us: totalPages promised a page that no longer
                    // exists. What we have is real data but not a snapshot.
                    tracing::info!(
                        page = index,
                        "page out of range during traversal; data shrank"
                    );
                    stable = false;
                    next = None;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }

    while let Some(n) = next {
        if n <= last_index || pages.len() >= MAX_PAGES {
            // Not moving forward: a broken cursor. Stop rather than loop.
            tracing::warn!(
                next = n,
                last = last_index,
                "nextPageIndex does not advance"
            );
            stable = false;
            break;
        }
        match fetch(n).await {
            Ok(p) => {
                next = p.next_page_index;
                last_index = n;
                pages.push(p);
            }
            Err(e) if is_out_of_range(&e) => {
                tracing::info!(page = n, "page out of range while following nextPageIndex");
                stable = false;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    stable &= pages.iter().all(|p| p.version_id == version);
    Ok((pages, stable))
}

/// Deduplicates by [`Record::key`], keeping first-seen order.
pub fn dedupe<T: Record>(records: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut index: HashMap<T::Key, usize> = HashMap::new();
    let mut out: Vec<T> = vec![];
    for r in records {
        match index.get(&r.key()) {
            Some(&i) => {
                if r.replaces(&out[i]) {
                    out[i] = r;
                }
            }
            None => {
                index.insert(r.key(), out.len());
                out.push(r);
            }
        }
    }
    out
}

/// Runs a traversal with `fetch(pageIndex)`, re-running it while pages disagree on versionId.
pub async fn traverse<T, F, Fut>(
    fetch: F,
    concurrency: usize,
    incremental: bool,
) -> Result<Traversal<T>, ApiError>
where
    T: Record,
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<Page<T>, ApiError>>,
{
    let mut attempt = 1;
    let mut previous: Option<HashSet<T::Key>> = None;
    loop {
        let (pages, mut consistent) = one_pass(&fetch, concurrency).await?;
        let version_id = pages.first().and_then(|p| p.version_id.clone());
        let n = u32::try_from(pages.len()).unwrap_or(u32::MAX);
        let records = dedupe(pages.into_iter().flat_map(|p| p.records));
        if !consistent {
            // versionId also moves when unrelated data is written: two passes that saw the
            // same records read a stable set, whatever the versionIds said.
            let keys: HashSet<T::Key> = records.iter().map(Record::key).collect();
            if previous.as_ref() == Some(&keys) {
                consistent = true;
            } else {
                previous = Some(keys);
            }
        }
        if consistent || attempt >= MAX_ATTEMPTS {
            if !consistent {
                tracing::warn!(
                    attempts = attempt,
                    "traversal still inconsistent; returning the last attempt's union"
                );
            }
            return Ok(Traversal {
                records,
                version_id,
                pages: n,
                consistent,
                incremental,
            });
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
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
            Ok(Page {
                records: recs,
                current_page_index: Some(i64::from(i)),
                next_page_index: (i + 1 < total).then_some(i + 1),
                total_pages: Some(total),
                version_id: Some(format!("v{churns}")),
            })
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
}
