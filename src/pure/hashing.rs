//! The hashes the plugin computes, none of them seeded: what they hash comes from
//! the configuration, the host or Nacos, never chosen by a client to collide.
//!
//! - [`stable_hash`]: bytes to a name that every VM of a gateway computes alike.
//! - [`mix_word`] and [`hash_piece`]: eight bytes a step, for hashes kept inside one
//!   VM (an answer's digest, what a heartbeat must carry at once).
//! - [`WordMap`]: a `HashMap` hashed by them. The request path looks up route and
//!   cluster names; std's SipHash costs a few hundred Wasm instructions a lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a's offset basis, where both [`stable_hash`] and [`mix_word`] hashes start.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: VMs share state only with VMs of the same configuration, and a
/// service's content only with guards that ask Nacos the same question.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where a [`mix_word`] hash starts.
pub const WORD_HASH_START: u64 = FNV_OFFSET_BASIS;

/// One 64-bit word into a hash kept only inside this VM: a multiply and a shift
/// per word, not per byte.
pub fn mix_word(hash: u64, word: u64) -> u64 {
    let hash = (hash ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    hash ^ (hash >> 32)
}

/// `hash` followed by `piece`, eight bytes at a time. The piece's length goes in
/// first, so the same bytes cut into pieces at other places hash otherwise.
pub fn hash_piece(hash: u64, piece: &[u8]) -> u64 {
    let mut hash = mix_word(hash, piece.len() as u64);
    let mut words = piece.chunks_exact(8);
    for word in &mut words {
        hash = mix_word(
            hash,
            u64::from_le_bytes(word.try_into().unwrap_or_default()),
        );
    }
    let mut last = [0u8; 8];
    for (to, from) in last.iter_mut().zip(words.remainder()) {
        *to = *from;
    }
    mix_word(hash, u64::from_le_bytes(last))
}

/// A [`Hasher`] made of [`hash_piece`] and [`mix_word`].
#[derive(Debug, Clone, Copy)]
pub struct WordHasher(u64);

impl Default for WordHasher {
    fn default() -> Self {
        Self(WORD_HASH_START)
    }
}

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        // hashbrown picks the bucket from the low bits and a tag from the top 7.
        mix_word(self.0, 0)
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_piece(self.0, bytes);
    }
    fn write_u8(&mut self, value: u8) {
        self.0 = mix_word(self.0, u64::from(value));
    }
    fn write_u32(&mut self, value: u32) {
        self.0 = mix_word(self.0, u64::from(value));
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = mix_word(self.0, value);
    }
    fn write_usize(&mut self, value: usize) {
        self.0 = mix_word(self.0, value as u64);
    }
}

/// A `HashMap` hashed by [`WordHasher`].
pub type WordMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;
    use std::collections::HashSet;
    use std::hash::{BuildHasher, Hash};

    fn hash_of<T: Hash>(value: &T) -> u64 {
        BuildHasherDefault::<WordHasher>::default().hash_one(value)
    }

    #[test]
    fn equal_keys_hash_alike_and_a_map_finds_them() {
        let mut map: WordMap<String, usize> = WordMap::default();
        for index in 0..1000 {
            map.insert(format!("default/route-{index}"), index);
        }
        assert_eq!(
            hash_of(&"default/route-7"),
            hash_of(&"default/route-7".to_string())
        );
        assert_eq!(map.get("default/route-999"), Some(&999));
        assert_eq!(map.get("default/route-1000"), None);
    }

    #[test]
    fn names_that_differ_in_one_byte_or_in_length_hash_apart() {
        let names = [
            "default/demo",
            "default/demp",
            "default/dem",
            "default/demo\0",
            "",
            "\0",
            "outbound|8080||demo.DEFAULT-GROUP.public.nacos",
            "outbound|8080||demo.DEFAULT-GROUP.public.nacoz",
        ];
        let hashes: HashSet<u64> = names.iter().map(hash_of).collect();
        assert_eq!(hashes.len(), names.len());
    }

    #[test]
    fn bucket_and_tag_bits_spread_over_similar_names() {
        // 4096 names that differ only in a counter: the low 10 bits (a bucket of a
        // 1024-slot table) and the top 7 (hashbrown's tag) each take most values.
        let hashes: Vec<u64> = (0..4096).map(|i| hash_of(&format!("route-{i}"))).collect();
        let buckets: HashSet<u64> = hashes.iter().map(|hash| hash & 1023).collect();
        let tags: HashSet<u64> = hashes.iter().map(|hash| hash >> 57).collect();
        assert!(buckets.len() > 950, "{} of 1024 buckets", buckets.len());
        assert_eq!(tags.len(), 128);
    }
}
