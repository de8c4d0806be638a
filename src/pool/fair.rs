//! The order in which a model's waiting calls are served: fair between
//! tenants, by priority within one.
//!
//! Tenants with waiting calls take turns in a *round*: the tenant at the
//! front is served up to its weight in calls, then goes to the back (or
//! leaves the round once it has nothing waiting; it joins at the back when
//! its next call comes). Within one tenant, the highest priority goes
//! first, then the oldest call. So a tenant with a thousand calls waiting
//! delays another tenant's next call by about one round, not a thousand
//! calls; with one tenant (auth off: everyone is `anonymous`) the queue is
//! the priority-then-FIFO queue it always was.
//!
//! A call can leave from the middle by its [`Key`] (its client went away):
//! the tenant's priority level is found by a short scan (a tenant has few
//! levels), the call by binary search on its id (ids only grow, and each
//! level keeps arrival order). Removal leaves a tombstone, compacted away
//! once tombstones outnumber live calls; tenants emptied by removal leave
//! the round lazily (when the round reaches them, or when such stale
//! entries outnumber the tenants waiting), so a cancellation is O(log n)
//! amortised. A few idle tenants' entries are kept, so that the common
//! case (one tenant, a queue that fills and empties) allocates nothing per
//! call; the rest are freed, so memory stays bounded however many tenants
//! come and go.
//!
//! Hand-written because the pieces that exist (a `BinaryHeap`, a
//! `BTreeMap` per tenant) either cannot remove from the middle cheaply or
//! allocate per call; and it is generic, so the threads' queue and the
//! task pool's run slots share one order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::tenant::Caller;

/// Entries of tenants with nothing waiting that are kept for reuse.
const IDLE_TENANTS_KEPT: usize = 16;
/// Dead entries (tombstones, stale round places) tolerated beyond the live
/// ones before they are compacted away.
const SLACK: usize = 64;

/// Where a waiting item sits: what [`FairQueue::remove`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    /// The tenant's slot (checked against `id` on removal: a slot reused by
    /// another tenant never holds this id).
    tenant: usize,
    priority: u32,
    /// Unique over the queue's life.
    id: u64,
}

/// A queue served in weighted round robin between tenants, by priority then
/// arrival within a tenant.
pub(crate) struct FairQueue<T> {
    /// Tenant entries by slot; freed slots are listed in `free`.
    tenants: Vec<Tenant<T>>,
    free: Vec<usize>,
    by_name: HashMap<Arc<str>, usize>,
    /// Slots of tenants taking turns, the one being served at the front.
    /// May hold tenants emptied by removal (see `compact_round`).
    round: VecDeque<usize>,
    /// The slot last pushed to: spares the hash lookup when one tenant
    /// sends everything (`usize::MAX` when none).
    last: usize,
    /// The id the next item gets.
    next_id: u64,
    /// Items waiting.
    live: usize,
    /// Tenants with items waiting.
    active: usize,
    /// Tenants with nothing waiting and out of the round, whose entries are
    /// kept (at most `IDLE_TENANTS_KEPT`).
    idle: usize,
}

struct Tenant<T> {
    name: Arc<str>,
    /// Calls per turn (at least 1); the latest call's caller sets it.
    weight: u32,
    /// Priority levels, highest first. At most one is empty (kept so that a
    /// tenant at one priority reuses its buffer).
    levels: Vec<Level<T>>,
    /// Items waiting in all levels.
    live: usize,
    /// Calls left in the current turn, while in the round.
    credit: u32,
    in_round: bool,
    /// The slot is free (listed in `FairQueue::free`).
    freed: bool,
}

struct Level<T> {
    priority: u32,
    /// Items in arrival order with their ids; `None` marks a removed one.
    slots: VecDeque<(u64, Option<T>)>,
    live: usize,
}

impl<T> FairQueue<T> {
    pub(crate) fn new() -> Self {
        FairQueue {
            tenants: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
            round: VecDeque::new(),
            last: usize::MAX,
            next_id: 0,
            live: 0,
            active: 0,
            idle: 0,
        }
    }

    /// Items waiting.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Tenants with items waiting.
    pub(crate) fn tenants(&self) -> usize {
        self.active
    }

    /// Adds an item of `caller` at `priority`.
    pub(crate) fn push(&mut self, caller: &Caller, priority: u32, item: T) -> Key {
        let slot = self.slot_of(caller);
        let id = self.next_id;
        self.next_id += 1;
        self.live += 1;
        let tenant = &mut self.tenants[slot];
        tenant.weight = caller.weight.max(1);
        if tenant.live == 0 {
            self.active += 1;
            if !tenant.in_round {
                self.idle -= 1;
            }
        }
        tenant.live += 1;
        if !tenant.in_round {
            tenant.in_round = true;
            tenant.credit = tenant.weight;
            self.round.push_back(slot);
        }
        let level = tenant.level(priority);
        level.slots.push_back((id, Some(item)));
        level.live += 1;
        Key {
            tenant: slot,
            priority,
            id,
        }
    }

    /// Takes the next item in fair order.
    pub(crate) fn pop(&mut self) -> Option<T> {
        while let Some(&slot) = self.round.front() {
            let Some(tenant) = self.tenants.get_mut(slot) else {
                self.round.pop_front();
                continue;
            };
            let Some(item) = tenant.take_best() else {
                // Emptied by removals since it joined: its turn is over.
                self.round.pop_front();
                tenant.in_round = false;
                self.went_idle(slot);
                continue;
            };
            self.live -= 1;
            tenant.credit = tenant.credit.saturating_sub(1);
            if tenant.live == 0 {
                self.round.pop_front();
                tenant.in_round = false;
                self.active -= 1;
                self.went_idle(slot);
            } else if tenant.credit == 0 {
                tenant.credit = tenant.weight;
                self.round.rotate_left(1);
            }
            return Some(item);
        }
        None
    }

    /// Takes an item out if it is still waiting.
    pub(crate) fn remove(&mut self, key: Key) -> Option<T> {
        let tenant = self.tenants.get_mut(key.tenant)?;
        let index = tenant
            .levels
            .iter()
            .position(|l| l.priority == key.priority)?;
        let level = &mut tenant.levels[index];
        let at = level
            .slots
            .binary_search_by_key(&key.id, |(id, _)| *id)
            .ok()?;
        let item = level.slots[at].1.take()?;
        level.live -= 1;
        if level.live == 0 {
            tenant.drop_level(index);
        } else if level.slots.len() > 2 * level.live + SLACK {
            level.slots.retain(|(_, item)| item.is_some());
        }
        tenant.live -= 1;
        self.live -= 1;
        if tenant.live == 0 {
            self.active -= 1;
            // It leaves the round when the round reaches it; unless stale
            // places pile up (workers all busy on long calls).
            if self.round.len() > 2 * self.active + SLACK {
                self.compact_round();
            }
        }
        Some(item)
    }

    /// Takes every waiting item out, in the order they would have been
    /// served.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        let mut items = Vec::with_capacity(self.live);
        while let Some(item) = self.pop() {
            items.push(item);
        }
        items
    }

    /// How many waiting items would be served before a new one of `caller`
    /// at `priority`: its own tenant's items at that priority or higher,
    /// plus what each other tenant gets in the rounds until then (its
    /// weight per round, at most what it has waiting). Errs short: the
    /// turn in progress is not counted.
    pub(crate) fn ahead(&self, caller: &Caller, priority: u32) -> usize {
        let own_slot = self.by_name.get(&*caller.tenant).copied();
        let own = own_slot
            .and_then(|slot| self.tenants.get(slot))
            .map_or(0, |tenant| {
                tenant
                    .levels
                    .iter()
                    .take_while(|l| l.priority >= priority)
                    .map(|l| l.live)
                    .sum()
            });
        let rounds = own / caller.weight.max(1) as usize + 1;
        let others: usize = self
            .round
            .iter()
            .filter(|&&slot| Some(slot) != own_slot)
            .filter_map(|&slot| self.tenants.get(slot))
            .map(|t| t.live.min(rounds.saturating_mul(t.weight as usize)))
            .sum();
        own + others
    }

    /// The slot of `caller`'s tenant, made if it has none.
    fn slot_of(&mut self, caller: &Caller) -> usize {
        if let Some(tenant) = self.tenants.get(self.last)
            && !tenant.freed
            && (Arc::ptr_eq(&tenant.name, &caller.tenant) || tenant.name == caller.tenant)
        {
            return self.last;
        }
        let slot = match self.by_name.get(&*caller.tenant) {
            Some(&slot) => slot,
            None => {
                let tenant = Tenant {
                    name: caller.tenant.clone(),
                    weight: caller.weight.max(1),
                    levels: Vec::new(),
                    live: 0,
                    credit: 0,
                    in_round: false,
                    freed: false,
                };
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.tenants[slot] = tenant;
                        slot
                    }
                    None => {
                        self.tenants.push(tenant);
                        self.tenants.len() - 1
                    }
                };
                self.by_name.insert(caller.tenant.clone(), slot);
                // Counted idle until its first item is pushed.
                self.idle += 1;
                slot
            }
        };
        self.last = slot;
        slot
    }

    /// A tenant left the round with nothing waiting: keep its entry for its
    /// next call, unless enough idle ones are kept already.
    fn went_idle(&mut self, slot: usize) {
        self.idle += 1;
        if self.idle <= IDLE_TENANTS_KEPT {
            return;
        }
        let Some(tenant) = self.tenants.get_mut(slot) else {
            return;
        };
        self.by_name.remove(&tenant.name);
        tenant.levels = Vec::new();
        tenant.freed = true;
        self.free.push(slot);
        self.idle -= 1;
        if self.last == slot {
            self.last = usize::MAX;
        }
    }

    /// Drops the round places of tenants emptied by removal.
    fn compact_round(&mut self) {
        let mut emptied = Vec::new();
        let tenants = &mut self.tenants;
        self.round.retain(|&slot| match tenants.get_mut(slot) {
            Some(tenant) if tenant.live > 0 => true,
            Some(tenant) => {
                tenant.in_round = false;
                emptied.push(slot);
                false
            }
            None => false,
        });
        for slot in emptied {
            self.went_idle(slot);
        }
    }
}

impl<T> Tenant<T> {
    /// The level of `priority`, made (or the kept empty one reused) if
    /// there is none.
    fn level(&mut self, priority: u32) -> &mut Level<T> {
        let index = match self.levels.iter().position(|l| l.priority == priority) {
            Some(index) => index,
            None if self.levels.len() == 1 && self.levels[0].live == 0 => {
                self.levels[0].priority = priority;
                0
            }
            None => {
                let index = self.levels.partition_point(|l| l.priority > priority);
                self.levels.insert(
                    index,
                    Level {
                        priority,
                        slots: VecDeque::new(),
                        live: 0,
                    },
                );
                index
            }
        };
        &mut self.levels[index]
    }

    /// Takes the tenant's best item: highest priority, then oldest.
    fn take_best(&mut self) -> Option<T> {
        let index = self.levels.iter().position(|l| l.live > 0)?;
        let level = &mut self.levels[index];
        while let Some((_, item)) = level.slots.pop_front() {
            let Some(item) = item else { continue };
            level.live -= 1;
            self.live -= 1;
            if level.live == 0 {
                self.drop_level(index);
            }
            return Some(item);
        }
        None
    }

    /// An emptied level: its tombstones go; the level too, unless it is the
    /// tenant's last one.
    fn drop_level(&mut self, index: usize) {
        if self.levels.len() > 1 {
            self.levels.remove(index);
        } else if let Some(level) = self.levels.get_mut(index) {
            level.slots.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str, weight: u32) -> Caller {
        Caller {
            tenant: Arc::from(name),
            weight,
            ..Caller::anonymous()
        }
    }

    #[test]
    fn one_tenant_is_fifo_within_a_priority() {
        let mut queue = FairQueue::new();
        let anon = Caller::anonymous();
        for i in 0..5 {
            queue.push(&anon, 0, i);
        }
        assert_eq!(queue.pop(), Some(0));
        queue.push(&anon, 0, 5);
        assert_eq!(queue.drain(), vec![1, 2, 3, 4, 5]);
        assert_eq!(queue.pop(), None);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn tenants_take_turns() {
        let mut queue = FairQueue::new();
        let (a, b, c) = (caller("a", 1), caller("b", 1), caller("c", 1));
        for i in 0..100 {
            queue.push(&a, 0, format!("a{i}"));
        }
        queue.push(&b, 0, "b0".into());
        queue.push(&b, 0, "b1".into());
        queue.push(&c, 0, "c0".into());
        assert_eq!(queue.tenants(), 3);
        let first: Vec<String> = (0..6).filter_map(|_| queue.pop()).collect();
        assert_eq!(first, ["a0", "b0", "c0", "a1", "b1", "a2"]);
        assert_eq!(queue.tenants(), 1);
        assert_eq!(queue.len(), 97);
    }

    #[test]
    fn a_tenant_gets_its_weight_per_round() {
        let mut queue = FairQueue::new();
        let (a, b) = (caller("a", 3), caller("b", 1));
        for i in 0..40 {
            queue.push(&a, 0, ('a', i));
            queue.push(&b, 0, ('b', i));
        }
        let first: String = (0..8).filter_map(|_| queue.pop()).map(|x| x.0).collect();
        assert_eq!(first, "aaabaaab");
        let next20: Vec<char> = (0..20).filter_map(|_| queue.pop()).map(|x| x.0).collect();
        assert_eq!(next20.iter().filter(|&&t| t == 'a').count(), 15);
    }

    #[test]
    fn higher_priority_first_within_a_tenant_only() {
        let mut queue = FairQueue::new();
        let (a, b) = (caller("a", 1), caller("b", 1));
        queue.push(&a, 1, "a-low");
        queue.push(&a, 9, "a-high");
        queue.push(&a, 5, "a-mid");
        queue.push(&a, 9, "a-high2");
        // B's low priority does not wait for A's high ones.
        queue.push(&b, 0, "b");
        assert_eq!(queue.drain(), ["a-high", "b", "a-high2", "a-mid", "a-low"]);
    }

    #[test]
    fn removal_from_the_middle() {
        let mut queue = FairQueue::new();
        let (a, b) = (caller("a", 1), caller("b", 1));
        let a0 = queue.push(&a, 0, "a0");
        let a1 = queue.push(&a, 0, "a1");
        queue.push(&a, 0, "a2");
        let b0 = queue.push(&b, 3, "b0");
        assert_eq!(queue.remove(a1), Some("a1"));
        assert_eq!(queue.remove(a1), None);
        assert_eq!(queue.len(), 3);
        assert_eq!(queue.pop(), Some("a0"));
        assert_eq!(queue.remove(a0), None, "already served");
        // B emptied by removal: its turn is skipped.
        assert_eq!(queue.remove(b0), Some("b0"));
        assert_eq!(queue.tenants(), 1);
        assert_eq!(queue.pop(), Some("a2"));
        assert_eq!(queue.pop(), None);
    }

    #[test]
    fn an_emptied_tenant_leaves_the_round_and_rejoins_at_the_back() {
        let mut queue = FairQueue::new();
        let (a, b) = (caller("a", 1), caller("b", 1));
        queue.push(&a, 0, "a0");
        queue.push(&b, 0, "b0");
        queue.push(&a, 0, "a1");
        assert_eq!(queue.pop(), Some("a0"));
        assert_eq!(queue.pop(), Some("b0"));
        assert_eq!(queue.tenants(), 1);
        queue.push(&b, 0, "b1");
        queue.push(&a, 0, "a2");
        assert_eq!(queue.drain(), ["a1", "b1", "a2"]);
    }

    #[test]
    fn a_stale_key_never_takes_another_tenants_item() {
        let mut queue = FairQueue::new();
        let keys: Vec<Key> = (0..20)
            .map(|i| queue.push(&caller(&format!("t{i}"), 1), 0, i))
            .collect();
        // All served: the last to go idle are freed beyond the kept ones.
        assert_eq!(queue.drain().len(), 20);
        let stale = keys[19];
        let new = queue.push(&caller("t-new", 1), 0, 1000);
        assert_eq!(new.tenant, stale.tenant, "the freed slot is reused");
        assert_eq!(queue.remove(stale), None);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.pop(), Some(1000));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut queue = FairQueue::new();
        let anon = Caller::anonymous();
        queue.push(&anon, 0, 0);
        // Tombstones behind a call that stays at the front.
        for i in 0..10_000 {
            let key = queue.push(&anon, 0, i);
            queue.remove(key);
        }
        let slots: usize = queue.tenants[0].levels.iter().map(|l| l.slots.len()).sum();
        assert!(slots <= SLACK + 2, "{slots}");
        assert_eq!(queue.pop(), Some(0));
        // Tenants coming and going, served or cancelled, with or without
        // priorities.
        for i in 0..10_000 {
            let c = caller(&format!("t{i}"), 1 + i % 3);
            let key = queue.push(&c, i % 7, i);
            if i % 2 == 0 {
                queue.remove(key);
            } else {
                queue.push(&c, 50, i + 1_000_000);
                assert_eq!(queue.pop(), Some(i + 1_000_000));
                assert_eq!(queue.pop(), Some(i));
            }
        }
        assert!(queue.tenants.len() <= IDLE_TENANTS_KEPT + SLACK + 4);
        assert!(queue.by_name.len() <= IDLE_TENANTS_KEPT + SLACK + 4);
        assert!(queue.round.len() <= 2 * queue.active + SLACK + 1);
        assert_eq!(queue.len(), queue.drain().len());
        assert!(queue.tenants.iter().all(|t| t.levels.len() <= 1));
    }

    #[test]
    fn ahead_counts_what_round_robin_serves_first() {
        let mut queue = FairQueue::new();
        let (a, b, c) = (caller("a", 1), caller("b", 1), caller("c", 2));
        for i in 0..1000 {
            queue.push(&a, 0, i);
        }
        // Alone: everything of its own tenant is ahead.
        assert_eq!(queue.ahead(&a, 0), 1000);
        // B's first call: one round, in which A serves one.
        assert_eq!(queue.ahead(&b, 0), 1);
        for i in 0..3 {
            queue.push(&b, 0, i);
        }
        // B's fourth call: four rounds (A four, B's own three).
        assert_eq!(queue.ahead(&b, 0), 7);
        // Weight 2: C's first call goes in the first round.
        assert_eq!(queue.ahead(&c, 0), 2);
        // A higher priority jumps its own tenant's queue only.
        assert_eq!(queue.ahead(&b, 1), 1);
    }
}
