//! Where the core keeps its unsettled events: one fixed-size slot per event in a dense
//! vector, found through a hash index of slot numbers, so that a million tracked events cost
//! about a hundred bytes each (docs/architecture.md, "Memory").
//!
//! A slot packs an [`EventRecord`] and the core's bookkeeping (`Tracked`) without any heap
//! allocation in the common case: eventIds in Apple's UUID form are stored as 16 bytes,
//! token names as an index into a small interner, optional values as flag bits. The rare
//! parts (eventIds that are not UUIDs, resubmission links, notification ids seen in this
//! process) live in side maps keyed by slot. Callers work on a materialised [`Tracked`]
//! ([`Table::get`]) and write it back ([`Table::put`]); the packing never leaks out.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use super::model::{EventType, Outcome, State};
use super::record::EventRecord;
use crate::time::Timestamp;

/// An unsettled event and what the core knows about it beyond its persisted record.
#[derive(Clone, Debug)]
pub(super) struct Tracked {
    pub(super) rec: EventRecord,
    /// Its row exists in the store (recovered, or an insert confirmed by `persisted`).
    pub(super) durable: bool,
    pub(super) in_flight: bool,
    /// Notification ids applied in this process's lifetime; the store dedupes across restarts.
    pub(super) seen: Vec<String>,
    /// `next_sync_id` when the current outcome was recorded (0 if recorded before a
    /// restart): only runs with an id at or above it started after the outcome. Sync ids,
    /// unlike the wall clock, never run backwards.
    pub(super) outcome_seq: u64,
    /// A resubmission for this event awaits its answer.
    pub(super) resubmitting: bool,
}

impl Tracked {
    pub(super) fn new(rec: EventRecord, durable: bool) -> Tracked {
        Tracked {
            rec,
            durable,
            in_flight: false,
            seen: Vec::new(),
            outcome_seq: 0,
            resubmitting: false,
        }
    }
}

/// A slot's number: stable while its event is in memory, reused after it leaves.
pub(super) type SlotId = u32;

// Flag bits of a slot.
const HAS_REQUEST: u16 = 1;
const RESUBMITTED: u16 = 1 << 1;
const NEEDS_FULL_SYNC: u16 = 1 << 2;
const DURABLE: u16 = 1 << 3;
const IN_FLIGHT: u16 = 1 << 4;
const RESUBMITTING: u16 = 1 << 5;
/// The id is not a UUID: its text is in `Table::texts`.
const ID_TEXT: u16 = 1 << 6;
/// The UUID was written in upper case.
const ID_UPPER: u16 = 1 << 7;
/// Resubmission links or seen notification ids are in `Table::extras`.
const HAS_EXTRAS: u16 = 1 << 8;
const SOME_SETTLED_AT: u16 = 1 << 9;
const SOME_OUTCOME_AT: u16 = 1 << 10;
const SOME_LAST_POLL_AT: u16 = 1 << 11;
const SOME_NEXT_CHECK_AT: u16 = 1 << 12;
const SOME_NUM_REQUESTED: u16 = 1 << 13;

/// One event, packed: 104 bytes, no heap.
#[derive(Clone, Copy, Debug)]
struct Slot {
    id: [u8; 16],
    tracked_at: i64,
    submitted_at: i64,
    settled_at: i64,
    outcome_at: i64,
    last_poll_at: i64,
    next_check_at: i64,
    outcome_seq: u64,
    token: u32,
    num_requested: u32,
    num_completed: u32,
    notified_success: u32,
    notified_failure: u32,
    polls: u32,
    backoff_attempt: u32,
    /// The index of the event type in [`EventType::ALL`], plus 16 times that of the state in
    /// [`State::ALL`].
    kind: u8,
    /// 0 for none, else 1 + the index in [`Outcome::ALL`].
    outcome: u8,
    flags: u16,
}

const _: () = assert!(std::mem::size_of::<Slot>() <= 104);

#[derive(Clone, Debug, Default)]
struct Extras {
    superseded_by: Option<String>,
    supersedes: Option<String>,
    seen: Vec<String>,
}

/// An eventId as the index compares it: a UUID's 16 bytes, or the text of any other id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key<'a> {
    Uuid([u8; 16], bool),
    Text(&'a str),
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The 16 bytes of a UUID in its canonical text form (8-4-4-4-12 hex digits, one case), and
/// whether it is upper case; `None` for any other string, which is then kept as text.
fn pack_uuid(s: &str) -> Option<([u8; 16], bool)> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let (mut lower, mut upper) = (false, false);
    let mut out = [0u8; 16];
    let mut nibbles = 0usize;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let v = hex(c)?;
        lower |= c.is_ascii_lowercase();
        upper |= c.is_ascii_uppercase();
        out[nibbles / 2] |= if nibbles.is_multiple_of(2) { v << 4 } else { v };
        nibbles += 1;
    }
    if lower && upper {
        return None;
    }
    Some((out, upper))
}

fn unpack_uuid(bytes: &[u8; 16], upper: bool) -> String {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut s = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(digits[usize::from(byte >> 4)] as char);
        s.push(digits[usize::from(byte & 0xf)] as char);
    }
    s
}

fn key_of(id: &str) -> Key<'_> {
    match pack_uuid(id) {
        Some((bytes, upper)) => Key::Uuid(bytes, upper),
        None => Key::Text(id),
    }
}

fn opt(flags: u16, bit: u16, v: i64) -> Option<Timestamp> {
    (flags & bit != 0).then_some(Timestamp(v))
}

fn set_opt(flags: &mut u16, bit: u16, v: Option<Timestamp>) -> i64 {
    match v {
        Some(t) => {
            *flags |= bit;
            t.0
        }
        None => 0,
    }
}

fn type_index(t: EventType) -> u8 {
    EventType::ALL.iter().position(|x| *x == t).unwrap_or(0) as u8
}

fn state_index(s: State) -> u8 {
    State::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

fn outcome_code(o: Option<Outcome>) -> u8 {
    o.and_then(|o| Outcome::ALL.iter().position(|x| *x == o))
        .map_or(0, |i| i as u8 + 1)
}

/// Token names, interned: a slot holds an index.
#[derive(Default)]
struct Tokens {
    names: Vec<Arc<str>>,
    index: BTreeMap<Arc<str>, u32>,
}

impl Tokens {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        let i = self.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.index.insert(name, i);
        i
    }
}

/// The unsettled events of the core. See the module docs.
#[derive(Default)]
pub(super) struct Table {
    slots: Vec<Slot>,
    /// Slots whose event left, for reuse.
    free: Vec<SlotId>,
    index: HashTable<SlotId>,
    hasher: RandomState,
    tokens: Tokens,
    texts: HashMap<SlotId, Box<str>>,
    extras: HashMap<SlotId, Extras>,
}

impl Table {
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Room for `more` events without growing (recovery knows how many it loads).
    pub(super) fn reserve(&mut self, more: usize) {
        let spare = self.free.len();
        self.slots.reserve(more.saturating_sub(spare));
        let hasher = &self.hasher;
        let (slots, texts) = (&self.slots, &self.texts);
        self.index
            .reserve(more, |s| hasher.hash_one(slot_key(slots, texts, *s)));
    }

    fn find(&self, id: &str) -> Option<SlotId> {
        let key = key_of(id);
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |s| slot_key(&self.slots, &self.texts, *s) == key)
            .copied()
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    /// The event's slot number, for the timer index.
    pub(super) fn slot_of(&self, id: &str) -> Option<SlotId> {
        self.find(id)
    }

    /// The eventId held in `slot`.
    pub(super) fn id_of(&self, slot: SlotId) -> Option<String> {
        let s = self.slots.get(slot as usize)?;
        Some(self.id_string(slot, s))
    }

    fn id_string(&self, slot: SlotId, s: &Slot) -> String {
        if s.flags & ID_TEXT != 0 {
            self.texts
                .get(&slot)
                .map(|t| t.to_string())
                .unwrap_or_default()
        } else {
            unpack_uuid(&s.id, s.flags & ID_UPPER != 0)
        }
    }

    /// A copy of the event, materialised.
    pub(super) fn get(&self, id: &str) -> Option<Tracked> {
        let slot = self.find(id)?;
        Some(self.materialise(slot))
    }

    fn materialise(&self, slot: SlotId) -> Tracked {
        let s = &self.slots[slot as usize];
        let f = s.flags;
        let extras = if f & HAS_EXTRAS != 0 {
            self.extras.get(&slot).cloned().unwrap_or_default()
        } else {
            Extras::default()
        };
        let rec = EventRecord {
            event_id: self.id_string(slot, s),
            token: self
                .tokens
                .names
                .get(s.token as usize)
                .map(|n| n.to_string())
                .unwrap_or_default(),
            event_type: EventType::ALL[usize::from(s.kind & 0xf) % EventType::ALL.len()],
            state: State::ALL[usize::from(s.kind >> 4) % State::ALL.len()],
            outcome: s
                .outcome
                .checked_sub(1)
                .and_then(|i| Outcome::ALL.get(usize::from(i)).copied()),
            tracked_at: Timestamp(s.tracked_at),
            submitted_at: Timestamp(s.submitted_at),
            settled_at: opt(f, SOME_SETTLED_AT, s.settled_at),
            outcome_at: opt(f, SOME_OUTCOME_AT, s.outcome_at),
            num_requested: (f & SOME_NUM_REQUESTED != 0).then_some(s.num_requested),
            num_completed: s.num_completed,
            notified_success: s.notified_success,
            notified_failure: s.notified_failure,
            polls: s.polls,
            last_poll_at: opt(f, SOME_LAST_POLL_AT, s.last_poll_at),
            backoff_attempt: s.backoff_attempt,
            next_check_at: opt(f, SOME_NEXT_CHECK_AT, s.next_check_at),
            has_request: f & HAS_REQUEST != 0,
            resubmitted: f & RESUBMITTED != 0,
            superseded_by: extras.superseded_by,
            supersedes: extras.supersedes,
            needs_full_sync: f & NEEDS_FULL_SYNC != 0,
        };
        Tracked {
            rec,
            durable: f & DURABLE != 0,
            in_flight: f & IN_FLIGHT != 0,
            seen: extras.seen,
            outcome_seq: s.outcome_seq,
            resubmitting: f & RESUBMITTING != 0,
        }
    }

    /// Stores `t`, replacing the event with the same id if there is one.
    pub(super) fn put(&mut self, t: &Tracked) {
        let slot = match self.find(&t.rec.event_id) {
            Some(slot) => slot,
            None => self.allocate(&t.rec.event_id),
        };
        let id_flags = self.slots[slot as usize].flags & (ID_TEXT | ID_UPPER);
        let packed = self.pack(t, id_flags, self.slots[slot as usize].id);
        self.slots[slot as usize] = packed;
        let r = &t.rec;
        if r.superseded_by.is_some() || r.supersedes.is_some() || !t.seen.is_empty() {
            self.slots[slot as usize].flags |= HAS_EXTRAS;
            self.extras.insert(
                slot,
                Extras {
                    superseded_by: r.superseded_by.clone(),
                    supersedes: r.supersedes.clone(),
                    seen: t.seen.clone(),
                },
            );
        } else {
            self.extras.remove(&slot);
        }
    }

    fn pack(&mut self, t: &Tracked, id_flags: u16, id: [u8; 16]) -> Slot {
        let r = &t.rec;
        let mut flags = id_flags;
        for (on, bit) in [
            (r.has_request, HAS_REQUEST),
            (r.resubmitted, RESUBMITTED),
            (r.needs_full_sync, NEEDS_FULL_SYNC),
            (t.durable, DURABLE),
            (t.in_flight, IN_FLIGHT),
            (t.resubmitting, RESUBMITTING),
        ] {
            if on {
                flags |= bit;
            }
        }
        let settled_at = set_opt(&mut flags, SOME_SETTLED_AT, r.settled_at);
        let outcome_at = set_opt(&mut flags, SOME_OUTCOME_AT, r.outcome_at);
        let last_poll_at = set_opt(&mut flags, SOME_LAST_POLL_AT, r.last_poll_at);
        let next_check_at = set_opt(&mut flags, SOME_NEXT_CHECK_AT, r.next_check_at);
        if r.num_requested.is_some() {
            flags |= SOME_NUM_REQUESTED;
        }
        Slot {
            id,
            tracked_at: r.tracked_at.0,
            submitted_at: r.submitted_at.0,
            settled_at,
            outcome_at,
            last_poll_at,
            next_check_at,
            outcome_seq: t.outcome_seq,
            token: self.tokens.intern(&r.token),
            num_requested: r.num_requested.unwrap_or(0),
            num_completed: r.num_completed,
            notified_success: r.notified_success,
            notified_failure: r.notified_failure,
            polls: r.polls,
            backoff_attempt: r.backoff_attempt,
            kind: type_index(r.event_type) | state_index(r.state) << 4,
            outcome: outcome_code(r.outcome),
            flags,
        }
    }

    /// A slot for a new id, with only the id set; the caller fills the rest.
    fn allocate(&mut self, id: &str) -> SlotId {
        let (bytes, flags) = match pack_uuid(id) {
            Some((bytes, upper)) => (bytes, if upper { ID_UPPER } else { 0 }),
            None => ([0; 16], ID_TEXT),
        };
        let empty = Slot {
            id: bytes,
            tracked_at: 0,
            submitted_at: 0,
            settled_at: 0,
            outcome_at: 0,
            last_poll_at: 0,
            next_check_at: 0,
            outcome_seq: 0,
            token: 0,
            num_requested: 0,
            num_completed: 0,
            notified_success: 0,
            notified_failure: 0,
            polls: 0,
            backoff_attempt: 0,
            kind: 0,
            outcome: 0,
            flags,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = empty;
                slot
            }
            None => {
                self.slots.push(empty);
                (self.slots.len() - 1) as SlotId
            }
        };
        if flags & ID_TEXT != 0 {
            self.texts.insert(slot, id.into());
        }
        let hash = self.hasher.hash_one(key_of(id));
        let (slots, texts, hasher) = (&self.slots, &self.texts, &self.hasher);
        self.index
            .insert_unique(hash, slot, |s| hasher.hash_one(slot_key(slots, texts, *s)));
        slot
    }

    /// The eventIds of `token`'s events (a scan: for giving a token up, not per event).
    pub(super) fn ids_of_token(&self, token: &str) -> Vec<String> {
        let Some(&t) = self.tokens.index.get(token) else {
            return Vec::new();
        };
        self.index
            .iter()
            .map(|s| (*s, &self.slots[*s as usize]))
            .filter(|(_, slot)| slot.token == t)
            .map(|(s, slot)| self.id_string(s, slot))
            .collect()
    }

    /// Takes the event out of memory.
    pub(super) fn remove(&mut self, id: &str) -> Option<Tracked> {
        let key = key_of(id);
        let hash = self.hasher.hash_one(key);
        let (slots, texts) = (&self.slots, &self.texts);
        let entry = self
            .index
            .find_entry(hash, |s| slot_key(slots, texts, *s) == key)
            .ok()?;
        let (slot, _) = entry.remove();
        let t = self.materialise(slot);
        self.texts.remove(&slot);
        self.extras.remove(&slot);
        self.free.push(slot);
        if self.free.len() == self.slots.len() {
            // Empty: give the memory back rather than keep a high-water mark.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        Some(t)
    }
}

fn slot_key<'a>(slots: &[Slot], texts: &'a HashMap<SlotId, Box<str>>, slot: SlotId) -> Key<'a> {
    let s = &slots[slot as usize];
    if s.flags & ID_TEXT != 0 {
        Key::Text(texts.get(&slot).map(|t| &**t).unwrap_or(""))
    } else {
        Key::Uuid(s.id, s.flags & ID_UPPER != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(id: &str, token: &str) -> EventRecord {
        EventRecord {
            event_id: id.into(),
            token: token.into(),
            event_type: EventType::Revoke,
            state: State::Syncing,
            outcome: Some(Outcome::NotFound),
            tracked_at: Timestamp(-5),
            submitted_at: Timestamp(7),
            settled_at: None,
            outcome_at: Some(Timestamp(0)),
            num_requested: Some(0),
            num_completed: 3,
            notified_success: 4,
            notified_failure: u32::MAX,
            polls: 9,
            last_poll_at: None,
            backoff_attempt: 2,
            next_check_at: Some(Timestamp(i64::MAX)),
            has_request: true,
            resubmitted: false,
            superseded_by: Some("x".into()),
            supersedes: None,
            needs_full_sync: true,
        }
    }

    #[test]
    fn uuids_pack_into_sixteen_bytes_and_keep_their_case() {
        for id in [
            "6f1c8a64-1f0b-4c1e-9b7a-2d3e4f5a6b7c",
            "6F1C8A64-1F0B-4C1E-9B7A-2D3E4F5A6B7C",
            "00000000-0000-0000-0000-000000000000",
        ] {
            let (bytes, upper) = pack_uuid(id).unwrap();
            assert_eq!(unpack_uuid(&bytes, upper), id);
        }
        for other in [
            "6f1c8a64-1f0b-4c1e-9b7a-2d3e4f5a6B7c",
            "6f1c8a641f0b4c1e9b7a2d3e4f5a6b7c",
            "6f1c8a64-1f0b-4c1e-9b7a-2d3e4f5a6b7g",
            "ev-1",
            "",
        ] {
            assert!(pack_uuid(other).is_none(), "{other}");
        }
    }

    #[test]
    fn a_record_comes_back_as_it_went_in() {
        let mut table = Table::default();
        for id in ["6f1c8a64-1f0b-4c1e-9b7a-2d3e4f5a6b7c", "not a uuid ✓"] {
            let mut t = Tracked::new(record(id, "acme"), true);
            t.seen = vec!["n1".into()];
            t.outcome_seq = u64::MAX;
            t.in_flight = true;
            table.put(&t);
            let back = table.get(id).unwrap();
            assert_eq!(back.rec, t.rec);
            assert_eq!(back.seen, t.seen);
            assert_eq!(back.outcome_seq, t.outcome_seq);
            assert!(back.durable && back.in_flight && !back.resubmitting);
        }
        assert_eq!(table.len(), 2);
        assert_eq!(table.get("not a uuid ✓").unwrap().rec.token, "acme");
        assert!(table.remove("not a uuid ✓").is_some());
        assert!(!table.contains("not a uuid ✓"));
        assert!(table.contains("6f1c8a64-1f0b-4c1e-9b7a-2d3e4f5a6b7c"));
        // The upper-case spelling is another id, as it is in the store.
        assert!(!table.contains("6F1C8A64-1F0B-4C1E-9B7A-2D3E4F5A6B7C"));
    }

    proptest! {
        /// The table behaves as a map from id to the last record put under it.
        #[test]
        fn the_table_is_a_map(ops in proptest::collection::vec((0u8..3, 0usize..6, any::<u32>()), 1..200)) {
            let ids = [
                "6f1c8a64-1f0b-4c1e-9b7a-2d3e4f5a6b7c",
                "6F1C8A64-1F0B-4C1E-9B7A-2D3E4F5A6B7C",
                "a", "b", "", "11111111-2222-3333-4444-555555555555",
            ];
            let mut table = Table::default();
            let mut model: BTreeMap<&str, EventRecord> = BTreeMap::new();
            for (op, i, n) in ops {
                let id = ids[i];
                match op {
                    0 | 1 => {
                        let mut rec = record(id, if n % 2 == 0 { "t1" } else { "t2" });
                        rec.polls = n;
                        rec.superseded_by = (n % 3 == 0).then(|| "s".to_string());
                        table.put(&Tracked::new(rec.clone(), false));
                        model.insert(id, rec);
                    }
                    _ => {
                        prop_assert_eq!(table.remove(id).map(|t| t.rec), model.remove(id));
                    }
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for (id, rec) in &model {
                let back = table.get(id).map(|t| t.rec);
                prop_assert_eq!(back.as_ref(), Some(rec));
                let slot = table.slot_of(id).unwrap();
                let back_id = table.id_of(slot);
                prop_assert_eq!(back_id.as_deref(), Some(*id));
            }
        }
    }
}
