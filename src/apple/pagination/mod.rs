//! Paginated traversal of Get Assets / Get Assignments / Get Users (docs/apple-api.md#pagination-and-versionid).
//!
//! Invariants:
//! - The end of data is the absence of `nextPageIndex` (apple-api.md §4: Apple's stop
//!   condition) or an empty page after page 0: the pager stops there, whatever `totalPages`
//!   said. `totalPages` is only a hint for which pages to fetch in parallel (at most 5 in
//!   flight, Apple's limit): requests past the last real page that are already in flight are
//!   dropped, none is started after it. Beyond the hint the traversal keeps following
//!   `nextPageIndex` from the last page fetched (`totalPages` can grow).
//! - A record that does not decode is never silently dropped: the pass counts it (and keeps
//!   the first few, [`Undecodable`], with page and index), logs a warning naming it, and
//!   [`Streamed::undecodable`] tells the caller, whose sync must then remove nothing (it
//!   cannot know that record is gone).
//! - `version_id` is page 0's, the one Apple says to store as the next `sinceVersionId`.
//! - A traversal is `consistent` only if every page carried that same versionId and no page
//!   vanished underneath us (9650 after a shrink). Inconsistent traversals are re-run, up to
//!   [`MAX_ATTEMPTS`] in all; the last attempt's records are kept with `consistent: false`
//!   so the caller upserts only and re-syncs later.
//! - Records are deduplicated by identity, last occurrence wins (a record that moved between
//!   pages mid-traversal appears twice).
//! - Streaming ([`traverse_into`]): pages go to a [`PageSink`] in index order as they arrive,
//!   so memory is bounded by a few pages (at most 5 in flight plus 2 fetched and waiting to
//!   be written), whatever the size of the data set; requests in flight keep being polled
//!   while a page is written, so writing never bunches requests past the rate gate. The sink
//!   deduplicates and, for a pass that was not consistent, digests its keys so two passes can
//!   be compared without keeping them. [`traverse`] is the same traversal collected in memory.
//!
//! The tests (against a fake pager scripted with pages, versionIds and failures) are in `tests.rs`.

use std::collections::HashMap;
use std::collections::HashSet;
use std::future::Future;
use std::hash::Hash;

use futures::stream::{self, StreamExt};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::error::ApiError;
use super::model::{
    Assignee, Assignment, GetAssetsResponse, GetAssignmentsResponse, GetUsersResponse, PageInfo,
    PageRecords, PricingParam, ResponseAsset, ResponseUser, Undecodable, UserStatus,
    UNDECODABLE_SAMPLES,
};

/// Whole traversals attempted before settling for an inconsistent one.
pub const MAX_ATTEMPTS: u32 = 3;
/// Apple: "don't submit more than five requests simultaneously".
pub const MAX_PAGE_CONCURRENCY: usize = 5;
/// Guard against a server whose `nextPageIndex` never ends.
const MAX_PAGES: usize = 100_000;

/// The result of one traversal collected in memory ([`traverse`]).
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
    /// Records of the returned attempt that did not decode (not in `records`).
    pub undecodable: u64,
    /// The returned attempt stopped before Apple's end of data (see [`Streamed::cut_short`]).
    pub cut_short: bool,
}

/// The result of one streamed traversal ([`traverse_into`]): the records went to the sink.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Streamed {
    /// Page 0's versionId of the last pass (store it as the next `sinceVersionId`).
    pub version_id: Option<String>,
    /// Pages fetched in the last pass.
    pub pages: u32,
    /// Records handed to the sink in the last pass (before deduplication).
    pub records: u64,
    /// Every page had the same versionId and none disappeared mid-traversal (or two passes
    /// delivered the same set of keys).
    pub consistent: bool,
    /// Fetched with `sinceVersionId`: the records are changes, not the whole set.
    pub incremental: bool,
    /// Records of the last pass that did not decode (not handed to the sink): the read is
    /// incomplete, so it proves no removals.
    pub undecodable: u64,
    /// The first of them, with their page.
    pub undecodable_samples: Vec<Undecodable>,
    /// The last pass stopped before Apple's end of data (an empty page pointing further, a
    /// `nextPageIndex` that does not advance): it may not hold every record.
    pub cut_short: bool,
}

impl Streamed {
    /// Every record Apple had was read (so the read may prove removals, if consistent).
    pub fn complete(&self) -> bool {
        self.undecodable == 0 && !self.cut_short
    }
}

/// An order-independent digest of a set of record keys: two passes that delivered the same
/// keys have equal digests (and different sets, with overwhelming probability, different
/// ones). Lets a sink compare passes without keeping the keys in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeySetDigest {
    count: u64,
    a: u64,
    b: u64,
}

impl KeySetDigest {
    /// Adds one key; add each distinct key once.
    pub fn add<K: Hash + ?Sized>(&mut self, key: &K) {
        use std::hash::{BuildHasher, BuildHasherDefault};
        type Fixed = BuildHasherDefault<std::hash::DefaultHasher>;
        let a = Fixed::default().hash_one((0xa5u8, key));
        let b = Fixed::default().hash_one((0x5au8, key));
        self.count += 1;
        self.a = self.a.wrapping_add(a);
        self.b = self.b.wrapping_add(b.rotate_left(17) ^ a);
    }
}

/// Where a streamed traversal hands its pages, in page order, as they arrive: the caller
/// writes them away (the mirror's stage) so a traversal holds only the pages in flight.
///
/// A traversal may make several passes (see the module docs): each starts with
/// [`PageSink::begin_pass`], after which the sink must forget what earlier passes delivered.
/// Within a pass a record may come twice (it moved between pages): the sink deduplicates by
/// [`Record::key`], honouring [`Record::replaces`] in delivery order.
pub trait PageSink<T> {
    type Error;
    /// Pass `pass` (1-based) starts: drop whatever earlier passes delivered.
    fn begin_pass(&mut self, pass: u32) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// The records of the next page.
    fn page(&mut self, records: Vec<T>) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// The digest of the distinct keys delivered in this pass (asked only of a pass that
    /// was not consistent, to compare it with the previous one).
    fn digest(&mut self) -> impl Future<Output = Result<KeySetDigest, Self::Error>> + Send;
}

/// A traversal that failed: Apple's answer, or the sink's.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamError<E> {
    Api(ApiError),
    Sink(E),
}

impl<E> From<ApiError> for StreamError<E> {
    fn from(e: ApiError) -> Self {
        StreamError::Api(e)
    }
}

/// The in-memory sink behind [`traverse`].
struct Collect<T> {
    records: Vec<T>,
}

impl<T: Record + Send> PageSink<T> for Collect<T> {
    type Error = std::convert::Infallible;
    fn begin_pass(&mut self, _pass: u32) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.records.clear();
        std::future::ready(Ok(()))
    }
    fn page(&mut self, records: Vec<T>) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.records.extend(records);
        std::future::ready(Ok(()))
    }
    fn digest(&mut self) -> impl Future<Output = Result<KeySetDigest, Self::Error>> + Send {
        let keys: HashSet<T::Key> = self.records.iter().map(Record::key).collect();
        let mut d = KeySetDigest::default();
        for k in &keys {
            d.add(k);
        }
        std::future::ready(Ok(d))
    }
}

/// One page as the traversal needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub records: Vec<T>,
    pub current_page_index: Option<i64>,
    pub next_page_index: Option<u32>,
    pub total_pages: Option<u32>,
    pub version_id: Option<String>,
    /// Records of the page that did not decode.
    pub undecodable: u64,
    /// The first of them.
    pub undecodable_samples: Vec<Undecodable>,
}

impl<T> Page<T> {
    fn new(records: PageRecords<T>, info: PageInfo) -> Page<T> {
        let idx = |v: Option<i64>| v.and_then(|n| u32::try_from(n).ok());
        Page {
            records: records.records,
            current_page_index: info.current_page_index,
            next_page_index: idx(info.next_page_index),
            total_pages: idx(info.total_pages),
            version_id: info.version_id,
            undecodable: records.undecodable,
            undecodable_samples: records.samples,
        }
    }

    /// A page with these records and nothing undecodable (tests, fakes).
    pub fn of(
        records: Vec<T>,
        current: u32,
        next: Option<u32>,
        total: Option<u32>,
        version_id: Option<String>,
    ) -> Page<T> {
        Page {
            records,
            current_page_index: Some(i64::from(current)),
            next_page_index: next,
            total_pages: total,
            version_id,
            undecodable: 0,
            undecodable_samples: Vec::new(),
        }
    }

    /// Scrubs `secret` out of the descriptions of undecodable records (a server echoing the
    /// token into a record must not put it in a log).
    pub fn redact(mut self, secret: &str) -> Page<T> {
        if !secret.is_empty() {
            for u in &mut self.undecodable_samples {
                u.detail = u.detail.replace(secret, "<redacted>");
                u.id = u.id.take().map(|id| id.replace(secret, "<redacted>"));
            }
        }
        self
    }

    /// Nothing on it, decoded or not.
    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.undecodable == 0
    }
}

impl From<GetAssetsResponse> for Page<ResponseAsset> {
    fn from(r: GetAssetsResponse) -> Self {
        Page::new(r.assets, r.page)
    }
}
impl From<GetAssignmentsResponse> for Page<Assignment> {
    fn from(r: GetAssignmentsResponse) -> Self {
        Page::new(r.assignments, r.page)
    }
}
impl From<GetUsersResponse> for Page<ResponseUser> {
    fn from(r: GetUsersResponse) -> Self {
        Page::new(r.users, r.page)
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

/// What one pass saw.
struct Pass {
    version_id: Option<String>,
    pages: u32,
    records: u64,
    stable: bool,
    undecodable: u64,
    samples: Vec<Undecodable>,
    cut_short: bool,
}

impl Pass {
    /// Counts page `index`'s records, decoded or not, warning about each undecodable one
    /// kept as a sample (the count covers the rest).
    fn count<T>(&mut self, index: u32, page: &mut Page<T>) {
        self.records += page.records.len() as u64;
        if page.undecodable == 0 {
            return;
        }
        self.undecodable += page.undecodable;
        tracing::warn!(
            page = index,
            undecodable = page.undecodable,
            "records of Apple's answer could not be decoded; this sync removes nothing"
        );
        for mut u in std::mem::take(&mut page.undecodable_samples) {
            u.page = Some(index);
            tracing::warn!(page = index, index = u.index, id = u.id.as_deref().unwrap_or("-"),
                detail = %u.detail, "undecodable record");
            if self.samples.len() < UNDECODABLE_SAMPLES {
                self.samples.push(u);
            }
        }
    }
}

/// Pages fetched and not yet written, beyond those in flight.
const QUEUED_PAGES: usize = 2;

/// One pass over all pages, each handed to `sink` in index order as it arrives. Fetching
/// and writing run side by side (one task, joined): a request in flight is always polled,
/// so a slow write never delays a request that already passed the rate gate. Memory: a page
/// slot is taken before a page is requested and given back once the sink has written it, so
/// at most `MAX_PAGE_CONCURRENCY + QUEUED_PAGES` pages exist at once. Returns whether the
/// pass saw a single, stable data set.
async fn one_pass<T, F, Fut, S>(
    fetch: &F,
    concurrency: usize,
    sink: &mut S,
) -> Result<Pass, StreamError<S::Error>>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<Page<T>, ApiError>>,
    S: PageSink<T>,
{
    let slots = Semaphore::new(MAX_PAGE_CONCURRENCY + QUEUED_PAGES);
    let (tx, mut rx) = futures::channel::mpsc::unbounded::<(Vec<T>, SemaphorePermit<'_>)>();
    let produce = fetch_pages(fetch, concurrency, &slots, tx);
    let consume = async {
        while let Some((records, slot)) = rx.next().await {
            if let Err(e) = sink.page(records).await {
                // Stop the fetching side: it may be waiting for a slot.
                slots.close();
                return Err(e);
            }
            drop(slot);
        }
        Ok(())
    };
    let (fetched, written) = futures::future::join(produce, consume).await;
    written.map_err(StreamError::Sink)?;
    Ok(fetched?)
}

/// The fetching side of [`one_pass`]: sends each page (with its slot) in index order.
async fn fetch_pages<'s, T, F, Fut>(
    fetch: &F,
    concurrency: usize,
    slots: &'s Semaphore,
    tx: futures::channel::mpsc::UnboundedSender<(Vec<T>, SemaphorePermit<'s>)>,
) -> Result<Pass, ApiError>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<Page<T>, ApiError>>,
{
    // A closed semaphore or a dropped receiver: the writing side failed; stop quietly (its
    // error is the one reported).
    let fetch_slotted = |i: u32| async move {
        let Ok(slot) = slots.acquire().await else {
            return Ok(None);
        };
        fetch(i).await.map(|p| Some((p, slot)))
    };
    let mut pass = Pass {
        version_id: None,
        pages: 0,
        records: 0,
        stable: true,
        undecodable: 0,
        samples: Vec::new(),
        cut_short: false,
    };
    let Some((mut first, slot)) = fetch_slotted(0).await? else {
        return Ok(pass);
    };
    let version = first.version_id.clone();
    pass.version_id = version.clone();
    let mut next = first.next_page_index;
    // Bounded like the follow-up loop: a page claiming billions of pages must not make us
    // queue that many fetches.
    let total = first.total_pages.unwrap_or(1).min(MAX_PAGES as u32);
    let mut last_index = 0u32;
    let mut pages = 1usize;
    pass.count(0, &mut first);
    if tx.unbounded_send((first.records, slot)).is_err() {
        return Ok(pass);
    }

    if next.is_some() && total > 1 {
        // Lazily fetched, at most `concurrency` ahead; dropped (with what is in flight) as
        // soon as a page says it is the last: totalPages never makes us read past it.
        let mut s = stream::iter(1..total)
            .map(fetch_slotted)
            .buffered(concurrency.clamp(1, MAX_PAGE_CONCURRENCY));
        let mut index = 0u32;
        while let Some(r) = s.next().await {
            index += 1;
            match r {
                Ok(None) => return Ok(pass),
                Ok(Some((mut p, slot))) => {
                    next = p.next_page_index;
                    last_index = index;
                    pages += 1;
                    pass.stable &= p.version_id == version;
                    pass.count(index, &mut p);
                    let empty = p.is_empty();
                    if tx.unbounded_send((p.records, slot)).is_err() {
                        return Ok(pass);
                    }
                    if empty {
                        next = stop_at_empty(index, next, &mut pass);
                    }
                    if next.is_none() {
                        break;
                    }
                }
                Err(e) if is_out_of_range(&e) => {
                    // The set shrank under us: the previous page promised this one, and it
                    // no longer exists. What we have is real data but not a snapshot.
                    tracing::info!(
                        page = index,
                        "page out of range during traversal; data shrank"
                    );
                    pass.stable = false;
                    next = None;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }

    while let Some(n) = next {
        if n <= last_index || pages >= MAX_PAGES {
            // Not moving forward: a broken cursor. Stop rather than loop.
            tracing::warn!(
                next = n,
                last = last_index,
                "nextPageIndex does not advance"
            );
            pass.stable = false;
            pass.cut_short = true;
            break;
        }
        match fetch_slotted(n).await {
            Ok(None) => return Ok(pass),
            Ok(Some((mut p, slot))) => {
                next = p.next_page_index;
                last_index = n;
                pages += 1;
                pass.stable &= p.version_id == version;
                pass.count(n, &mut p);
                let empty = p.is_empty();
                if tx.unbounded_send((p.records, slot)).is_err() {
                    return Ok(pass);
                }
                if empty {
                    next = stop_at_empty(n, next, &mut pass);
                }
            }
            Err(e) if is_out_of_range(&e) => {
                tracing::info!(page = n, "page out of range while following nextPageIndex");
                pass.stable = false;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    pass.pages = u32::try_from(pages).unwrap_or(u32::MAX);
    Ok(pass)
}

/// An empty page after page 0 ends the traversal: Apple's pages are full up to the last, so
/// a server that keeps pointing further past an empty page is not followed (it could make
/// us read forever). Since that pass may then miss records, it proves no removals.
fn stop_at_empty(index: u32, next: Option<u32>, pass: &mut Pass) -> Option<u32> {
    if let Some(n) = next {
        tracing::warn!(
            page = index,
            next = n,
            "an empty page points to a next page; stopping there"
        );
        pass.cut_short = true;
    }
    None
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

/// Runs a traversal with `fetch(pageIndex)`, re-running it while pages disagree on
/// versionId, and collects the records in memory (deduplicated). For small reads and tests;
/// syncs stream with [`traverse_into`].
pub async fn traverse<T, F, Fut>(
    fetch: F,
    concurrency: usize,
    incremental: bool,
) -> Result<Traversal<T>, ApiError>
where
    T: Record + Send,
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<Page<T>, ApiError>>,
{
    let mut sink = Collect {
        records: Vec::new(),
    };
    let t = traverse_into(fetch, concurrency, incremental, &mut sink)
        .await
        .map_err(|e| match e {
            StreamError::Api(e) => e,
            StreamError::Sink(never) => match never {},
        })?;
    Ok(Traversal {
        records: dedupe(sink.records),
        version_id: t.version_id,
        pages: t.pages,
        consistent: t.consistent,
        incremental,
        undecodable: t.undecodable,
        cut_short: t.cut_short,
    })
}

/// Runs a traversal with `fetch(pageIndex)`, handing every page to `sink` as it arrives,
/// re-running it while pages disagree on versionId (each re-run starts with
/// [`PageSink::begin_pass`]). Memory: the pages in flight, never the whole set.
pub async fn traverse_into<T, F, Fut, S>(
    fetch: F,
    concurrency: usize,
    incremental: bool,
    sink: &mut S,
) -> Result<Streamed, StreamError<S::Error>>
where
    T: Record,
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<Page<T>, ApiError>>,
    S: PageSink<T>,
{
    let mut attempt = 1;
    let mut previous: Option<KeySetDigest> = None;
    loop {
        sink.begin_pass(attempt).await.map_err(StreamError::Sink)?;
        let pass = one_pass(&fetch, concurrency, sink).await?;
        let mut consistent = pass.stable;
        if !consistent {
            // versionId also moves when unrelated data is written: two passes that saw the
            // same records read a stable set, whatever the versionIds said.
            let keys = sink.digest().await.map_err(StreamError::Sink)?;
            if previous == Some(keys) {
                consistent = true;
            } else {
                previous = Some(keys);
            }
        }
        if consistent || attempt >= MAX_ATTEMPTS {
            if !consistent {
                tracing::warn!(
                    attempts = attempt,
                    "traversal still inconsistent; keeping the last attempt's union"
                );
            }
            return Ok(Streamed {
                version_id: pass.version_id,
                pages: pass.pages,
                records: pass.records,
                consistent,
                incremental,
                undecodable: pass.undecodable,
                undecodable_samples: pass.samples,
                cut_short: pass.cut_short,
            });
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests;
