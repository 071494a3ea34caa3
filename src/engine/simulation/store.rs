//! Envoy's shared data, as `SharedData::get`/`set` in Envoy's Wasm extension
//! keep it: one process-wide compare-and-swap counter; reading an absent key
//! gives no token; a write without a token, or to an absent key, always lands.

use std::collections::{BTreeMap, BTreeSet};

use super::rng::Rng;
use crate::engine::SharedStore;

#[derive(Clone, Default)]
pub struct SimStore {
    entries: BTreeMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl SimStore {
    pub fn value(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(|(value, _)| value.as_slice())
    }
}

impl SharedStore for SimStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.entries.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.next_cas += 1;
        let next = self.next_cas;
        match self.entries.get_mut(key) {
            None => {
                self.entries.insert(key.to_string(), (value.to_vec(), next));
                true
            }
            Some((_, current)) if cas.is_some_and(|cas| cas != 0 && cas != *current) => false,
            Some(entry) => {
                *entry = (value.to_vec(), next);
                true
            }
        }
    }
}

/// What one VM sees during one callback. A callback that ran at the same moment
/// as another VM's read the store before the other wrote: its reads come from
/// `stale` (the store as it was), its writes go to the live store (and its
/// compare-and-swap tokens are checked there), and it reads back its own writes.
pub struct View<'a> {
    pub live: &'a mut SimStore,
    pub stale: Option<&'a SimStore>,
    pub written: BTreeSet<String>,
    /// Other workers writing at the same moment (a burst): per mille of this
    /// callback's compare-and-swap writes another worker's write beats, landing
    /// between this one's read and its write.
    pub contention: Option<(Rng, u64)>,
    /// Compare-and-swap writes lost that way.
    pub beaten: u64,
}

impl<'a> View<'a> {
    pub fn new(live: &'a mut SimStore, stale: Option<&'a SimStore>) -> Self {
        Self {
            live,
            stale,
            written: BTreeSet::new(),
            contention: None,
            beaten: 0,
        }
    }

    pub fn contended(mut self, rng: Rng, per_mille: u64) -> Self {
        self.contention = Some((rng, per_mille));
        self
    }
}

impl SharedStore for View<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.stale {
            Some(stale) if !self.written.contains(key) => stale.get(key),
            _ => self.live.get(key),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.written.insert(key.to_string());
        if let (Some((rng, per_mille)), Some(_)) = (&mut self.contention, cas) {
            if let Some(current) = self.live.value(key).map(<[u8]>::to_vec) {
                if rng.chance(*per_mille) {
                    // Another worker's write of the key lands first; its content
                    // does not matter here, only that the token read is spent.
                    self.live.set(key, &current, None);
                    self.beaten += 1;
                }
            }
        }
        self.live.set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_semantics() {
        let mut store = SimStore::default();
        assert_eq!(store.get("k"), (None, None));
        // An absent key is written whatever token comes with the write.
        assert!(store.set("k", b"a", Some(77)));
        let (value, cas) = store.get("k");
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        assert!(store.set("k", b"b", cas));
        assert!(!store.set("k", b"c", cas), "the token is spent");
        assert!(store.set("k", b"d", None), "no token: unconditional");
        let stale = store.clone();
        assert!(store.set("k", b"e", None));
        let mut view = View::new(&mut store, Some(&stale));
        assert_eq!(view.get("k").0.as_deref(), Some(&b"d"[..]));
        let cas = view.get("k").1;
        assert!(!view.set("k", b"f", cas), "a stale token fails live");
    }
}
