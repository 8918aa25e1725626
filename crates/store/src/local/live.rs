//! The live sessions of one shard, in a slab whose slot number each session's id carries.
//!
//! An id made for this store names its slot (bytes 4..8, little-endian; see
//! [`Live::issue`]), and the slot holds the record itself, so finding a session is one
//! read of memory the id points to: no hash table and no pointer between. (The hash map
//! of `Arc`s this replaces cost two more dependent loads per validate, and about
//! 70 bytes more per session at a million: docs/benchmarks.md, twentieth session.) A slot
//! is the record and 16 bytes; the slab grows by chunks of [`CHUNK`] slots, so it holds
//! at most a chunk of spare room besides the slots of ended sessions, which it reuses.
//!
//! Ids that do not name their slot (made before ids carried one, created while the store
//! was loading, or read back naming a slot past what the load places) are kept in any
//! vacant slot and found through `spill`, a map that is empty otherwise.
//!
//! A slot is reused once its session ends. A token of the ended session then names a slot
//! holding someone else; the full id in the record tells them apart, and the lookup goes
//! on to the tombstones.

use rustc_hash::FxHashMap;
use sessiond_core::SessionId;

use super::Entry;

/// Slots per chunk of the slab: about 70 KiB.
const CHUNK: usize = 256;

/// What one slot holds.
// The record itself, not a pointer to it, is the point of the slab: a vacant slot costs
// as much room as a live one.
#[allow(clippy::large_enum_variant)]
enum Slot {
    /// Free, and listed in [`Live::free`].
    Vacant,
    /// Named by the id a create is about to insert (between [`Live::issue`] and
    /// [`Live::insert`] or [`Live::release`]); nobody else may take it.
    Issued(SessionId),
    Live(Entry),
}

/// The slot an id names (whether or not it was made for this store).
fn slot_of(id: &SessionId) -> usize {
    u32::from_le_bytes([id.0[4], id.0[5], id.0[6], id.0[7]]) as usize
}

/// The live sessions of one shard; see the module docs.
#[derive(Default)]
pub(super) struct Live {
    /// Slot `k` is `chunks[k / CHUNK][k % CHUNK]`.
    chunks: Vec<Box<[Slot]>>,
    /// Every vacant slot, the next to reuse last.
    free: Vec<u32>,
    /// Where each id that does not name its own slot is kept.
    spill: FxHashMap<SessionId, u32>,
}

impl Live {
    /// Whether the slab has any slot yet. A load's slab has one only if it placed a
    /// session, so this tells a loaded shard from one the load never reached, without a
    /// scan.
    pub(super) fn has_slots(&self) -> bool {
        !self.chunks.is_empty()
    }

    /// Sessions kept through the spill map rather than at the slot their id names.
    pub(super) fn spilled(&self) -> usize {
        self.spill.len()
    }

    /// Writes a vacant slot's number into `id` (bytes 4..8, which the caller drew at
    /// random) and holds the slot for it until [`Live::insert`] or [`Live::release`].
    pub(super) fn issue(&mut self, id: &mut SessionId) {
        let Ok(slot) = u32::try_from(self.vacant()) else {
            return; // four billion slots in one shard: leave the id as it came
        };
        id.0[4..8].copy_from_slice(&slot.to_le_bytes());
        *self.slot_mut(slot as usize) = Slot::Issued(*id);
    }

    /// Gives back the slot [`Live::issue`] held for `id`, whose create did not happen.
    pub(super) fn release(&mut self, id: &SessionId) {
        let k = slot_of(id);
        if matches!(self.slot(k), Some(Slot::Issued(i)) if i == id) {
            *self.slot_mut(k) = Slot::Vacant;
            self.free.push(k as u32);
        }
    }

    #[inline]
    fn slot(&self, k: usize) -> Option<&Slot> {
        self.chunks.get(k / CHUNK).map(|c| &c[k % CHUNK])
    }

    /// Slot `k`, which must exist (`k` came from the free list, the spill map or a
    /// successful [`Live::slot`]).
    #[inline]
    fn slot_mut(&mut self, k: usize) -> &mut Slot {
        &mut self.chunks[k / CHUNK][k % CHUNK]
    }

    /// Slots in the slab, vacant or not.
    pub(super) fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// Adds a chunk of vacant slots; returns the number of its first.
    fn grow(&mut self) -> usize {
        let first = self.capacity();
        self.chunks.push(
            (0..CHUNK)
                .map(|_| Slot::Vacant)
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        first
    }

    /// Where `id`'s session is, if it is here.
    #[inline]
    fn index_of(&self, id: &SessionId) -> Option<usize> {
        let k = slot_of(id);
        if let Some(Slot::Live(e)) = self.slot(k)
            && e.session.id == *id
        {
            return Some(k);
        }
        if self.spill.is_empty() {
            return None;
        }
        self.spill.get(id).map(|&k| k as usize)
    }

    #[inline]
    pub(super) fn get(&self, id: &SessionId) -> Option<&Entry> {
        match self.slot(self.index_of(id)?) {
            Some(Slot::Live(e)) => Some(e),
            _ => None,
        }
    }

    #[inline]
    pub(super) fn get_mut(&mut self, id: &SessionId) -> Option<&mut Entry> {
        let k = self.index_of(id)?;
        match self.slot_mut(k) {
            Slot::Live(e) => Some(e),
            _ => None,
        }
    }

    pub(super) fn contains(&self, id: &SessionId) -> bool {
        self.index_of(id).is_some()
    }

    /// Adds a session that is not here yet: at the slot its id names if that was issued
    /// for it, anywhere else otherwise.
    pub(super) fn insert(&mut self, entry: Entry) {
        let id = entry.session.id;
        let k = slot_of(&id);
        if matches!(self.slot(k), Some(Slot::Issued(i)) if *i == id) {
            *self.slot_mut(k) = Slot::Live(entry);
        } else {
            let k = self.vacant();
            *self.slot_mut(k) = Slot::Live(entry);
            self.spill.insert(id, k as u32);
        }
    }

    /// Takes `id`'s session out; its slot becomes vacant.
    pub(super) fn remove(&mut self, id: &SessionId) -> Option<Entry> {
        let k = self.index_of(id)?;
        let Slot::Live(entry) = std::mem::replace(self.slot_mut(k), Slot::Vacant) else {
            return None; // index_of only answers live slots
        };
        if !self.spill.is_empty() {
            self.spill.remove(id);
        }
        self.free.push(k as u32);
        Some(entry)
    }

    /// Every live session, in slot order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .filter_map(|s| match s {
                Slot::Live(e) => Some(e),
                _ => None,
            })
    }

    /// A vacant slot's number, taken off the free list, which a new chunk refills.
    fn vacant(&mut self) -> usize {
        if let Some(k) = self.free.pop() {
            return k as usize;
        }
        let first = self.grow();
        self.free
            .extend((first + 1..first + CHUNK).rev().map(|k| k as u32));
        first
    }

    /// While loading: puts `entry` at the slot its id names if that is below `limit` and
    /// still vacant, or hands it back to be [`Live::insert`]ed after [`Live::finish_load`]. `limit` keeps an id that
    /// does not name a slot (its bytes 4..8 are random) from growing the slab to billions.
    pub(super) fn load(&mut self, entry: Entry, limit: usize) -> Option<Entry> {
        let k = slot_of(&entry.session.id);
        if k >= limit {
            return Some(entry);
        }
        while k >= self.capacity() {
            self.grow();
        }
        let slot = self.slot_mut(k);
        if !matches!(slot, Slot::Vacant) {
            return Some(entry);
        }
        *slot = Slot::Live(entry);
        None
    }

    /// Ends a load's placing: lists the slots left vacant, the lowest to be reused first.
    /// The sessions [`Live::load`] handed back are [`Live::insert`]ed after this, into
    /// those holes, through the spill map.
    pub(super) fn finish_load(&mut self) {
        self.free = (0..self.capacity())
            .rev()
            .filter(|&k| matches!(self.slot(k), Some(Slot::Vacant)))
            .map(|k| k as u32)
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use sessiond_core::session::NewSession;
    use sessiond_core::{Policy, Session, SessionId, Timestamp, Verifier};

    use super::{Live, Slot, slot_of};
    use crate::local::Entry;

    fn entry(id: SessionId) -> Entry {
        let new = NewSession {
            user: "alice".into(),
            ..NewSession::default()
        };
        let now = Timestamp(1_800_000_000_000);
        let session = Session::create(
            new,
            id,
            Verifier([1; 32]),
            "default",
            &Policy::default(),
            now,
        );
        Entry::new(session)
    }

    fn random_id() -> SessionId {
        SessionId::for_user("alice").expect("random id")
    }

    /// The memory figure in the module docs.
    #[test]
    fn a_slot_is_the_record_and_16_bytes() {
        assert_eq!(
            std::mem::size_of::<Slot>(),
            std::mem::size_of::<Session>() + 16
        );
    }

    #[test]
    fn an_issued_id_names_its_slot_and_needs_no_spill() {
        let mut live = Live::default();
        let mut ids = Vec::new();
        for _ in 0..10 {
            let mut id = random_id();
            let random = id.0[8..].to_vec();
            live.issue(&mut id);
            assert_eq!(id.0[8..], random[..], "only bytes 4..8 are the slot's");
            live.insert(entry(id));
            ids.push(id);
        }
        assert_eq!(live.iter().count(), 10);
        assert_eq!(live.spilled(), 0);
        for (k, id) in ids.iter().enumerate() {
            assert_eq!(slot_of(id), k);
            assert_eq!(live.get(id).map(|e| e.session.id), Some(*id));
        }
    }

    #[test]
    fn an_id_that_names_no_slot_is_found_through_the_spill() {
        let mut live = Live::default();
        let mut issued = random_id();
        live.issue(&mut issued);
        live.insert(entry(issued));
        // A random id whose bytes 4..8 name slot 0, which someone else holds.
        let mut stray = random_id();
        stray.0[4..8].copy_from_slice(&0u32.to_le_bytes());
        let far = random_id();
        live.insert(entry(stray));
        live.insert(entry(far));
        assert_eq!(live.spilled(), 2);
        for id in [issued, stray, far] {
            assert_eq!(live.get(&id).map(|e| e.session.id), Some(id));
        }
        assert_eq!(live.remove(&stray).map(|e| e.session.id), Some(stray));
        assert!(live.get(&stray).is_none());
        assert_eq!(live.spilled(), 1);
        assert_eq!(live.get(&issued).map(|e| e.session.id), Some(issued));
    }

    #[test]
    fn a_reused_slot_does_not_answer_for_the_session_it_held_before() {
        let mut live = Live::default();
        let mut old = random_id();
        live.issue(&mut old);
        live.insert(entry(old));
        assert!(live.remove(&old).is_some());
        let mut new = random_id();
        live.issue(&mut new);
        assert_eq!(slot_of(&new), slot_of(&old), "the vacant slot is reused");
        live.insert(entry(new));
        assert!(live.get(&old).is_none());
        assert!(live.remove(&old).is_none());
        assert_eq!(live.get(&new).map(|e| e.session.id), Some(new));
        assert_eq!(live.iter().count(), 1);
    }

    #[test]
    fn a_released_slot_is_issued_again_and_holds_nothing_meanwhile() {
        let mut live = Live::default();
        let mut first = random_id();
        live.issue(&mut first);
        assert!(live.get(&first).is_none(), "issued is not live");
        live.release(&first);
        let mut second = random_id();
        live.issue(&mut second);
        assert_eq!(slot_of(&second), slot_of(&first));
        // The first id cannot take the slot back from the one it was issued to.
        live.insert(entry(first));
        live.insert(entry(second));
        assert_eq!(
            live.spill.keys().collect::<Vec<_>>(),
            [&first],
            "first is spilled"
        );
        assert!(matches!(live.slot(0), Some(Slot::Live(e)) if e.session.id == second));
        assert_eq!(live.get(&first).map(|e| e.session.id), Some(first));
    }

    #[test]
    fn a_load_puts_sessions_back_at_their_slots_and_spills_the_rest() {
        let mut before = Live::default();
        let mut ids = Vec::new();
        for _ in 0..6 {
            let mut id = random_id();
            before.issue(&mut id);
            before.insert(entry(id));
            ids.push(id);
        }
        // Two end, leaving holes at slots 1 and 4.
        before.remove(&ids[1]);
        before.remove(&ids[4]);
        let legacy = random_id();
        let mut after = Live::default();
        let mut rest = Vec::new();
        for id in [ids[0], ids[2], ids[3], ids[5], legacy] {
            if let Some(e) = after.load(entry(id), 1024) {
                rest.push(e);
            }
        }
        after.finish_load();
        for e in rest {
            after.insert(e);
        }
        assert_eq!(after.iter().count(), 5);
        assert_eq!(after.spilled(), 1, "only the id that names no slot");
        for id in [ids[0], ids[2], ids[3], ids[5], legacy] {
            assert_eq!(after.get(&id).map(|e| e.session.id), Some(id));
        }
        // The legacy session took the lowest hole; the other is issued next.
        let mut next = random_id();
        after.issue(&mut next);
        assert_eq!(slot_of(&next), 4);
    }
}
