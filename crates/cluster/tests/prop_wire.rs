//! Properties of the heartbeat datagram (`cluster::wire`), the one format a node reads
//! from anyone who can reach its heartbeat port.
//!
//! - every beat survives `encode` then `decode` with the same key, and its datagram
//!   fits the `MAX_BEAT` buffer the receiver reads into;
//! - a datagram changed in any way (bit flips, cut short, made longer, bytes replaced)
//!   never decodes, and never panics;
//! - arbitrary bytes never decode and never panic;
//! - a beat signed with another key is `Forged`, never accepted.
//!
//! The number of cases comes from `PROPTEST_CASES` (proptest's default, 256, when it is
//! unset); `bench/fuzz` runs this file with 100,000.

use cluster::wire::{Beat, Rejected, State, MAX_BEAT};
use proptest::prelude::*;

fn state() -> impl Strategy<Value = State> {
    prop_oneof![
        Just(State::Active),
        Just(State::Passive),
        Just(State::Leaving)
    ]
}

/// Names as the site allows them (short ASCII) and anything else a caller could pass:
/// any Unicode, and longer than the one length byte can say.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,63}",
        any::<String>(),
        proptest::collection::vec(any::<char>(), 60..300).prop_map(String::from_iter),
    ]
}

fn beat() -> impl Strategy<Value = Beat> {
    (
        name(),
        state(),
        any::<u8>(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(any::<[u8; 8]>()),
    )
        .prop_map(|(name, state, priority, healthy, boot, seq, config)| Beat {
            name,
            state,
            priority,
            healthy,
            boot,
            seq,
            config,
        })
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 1..64)
}

/// The name as the datagram carries it: at most 255 bytes, cut at a character boundary.
fn carried(name: &str) -> &str {
    let mut end = name.len().min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// One way of changing a datagram in flight.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte (at an index taken modulo the length) with a non-zero mask.
    Flip(usize, u8),
    /// Keep only the first bytes.
    Truncate(usize),
    /// Append bytes.
    Extend(Vec<u8>),
    /// Overwrite a run of bytes starting at an index.
    Splice(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Mutation::Flip(i, m)),
        any::<usize>().prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..32).prop_map(Mutation::Extend),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Mutation::Splice(i, b)),
    ]
}

fn apply(bytes: &[u8], mutation: &Mutation) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match mutation {
        Mutation::Flip(i, mask) => out[i % bytes.len()] ^= mask,
        Mutation::Truncate(n) => out.truncate(n % bytes.len()),
        Mutation::Extend(more) => out.extend_from_slice(more),
        Mutation::Splice(i, with) => {
            let start = i % bytes.len();
            for (slot, b) in out[start..].iter_mut().zip(with) {
                *slot = *b;
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn a_beat_round_trips_with_its_key(beat in beat(), key in key()) {
        let bytes = beat.encode(&key);
        prop_assert!(bytes.len() <= MAX_BEAT, "{} bytes > MAX_BEAT", bytes.len());
        let decoded = Beat::decode(&bytes, &key);
        let expected = Beat { name: carried(&beat.name).to_owned(), ..beat };
        prop_assert_eq!(decoded, Ok(expected));
    }

    #[test]
    fn a_changed_beat_never_verifies(beat in beat(), key in key(), mutations in proptest::collection::vec(mutation(), 1..4)) {
        let bytes = beat.encode(&key);
        let mut changed = bytes.clone();
        for m in &mutations {
            if changed.is_empty() {
                break;
            }
            changed = apply(&changed, m);
        }
        prop_assume!(changed != bytes);
        let decoded = Beat::decode(&changed, &key);
        prop_assert!(decoded.is_err(), "a changed datagram was accepted: {:?}", decoded);
    }

    #[test]
    fn another_key_is_forged(beat in beat(), key in key(), other in key()) {
        prop_assume!(key != other);
        let bytes = beat.encode(&key);
        prop_assert_eq!(Beat::decode(&bytes, &other), Err(Rejected::Forged));
    }

    #[test]
    fn arbitrary_bytes_never_decode(bytes in proptest::collection::vec(any::<u8>(), 0..=MAX_BEAT + 8), key in key()) {
        prop_assert!(Beat::decode(&bytes, &key).is_err());
    }

    /// Bytes that pass every check before the tag (magic, version, length), so the
    /// tag comparison itself is what refuses them.
    #[test]
    fn well_shaped_bytes_never_verify(
        version in 1..=2u8,
        state in 0..=4u8,
        rest in proptest::collection::vec(any::<u8>(), 18 + 8),
        name in proptest::collection::vec(any::<u8>(), 0..=255),
        tag in proptest::collection::vec(any::<u8>(), 16),
        key in key(),
    ) {
        let mut bytes = b"SUHB".to_vec();
        bytes.push(version);
        bytes.push(state);
        // Priority, healthy, boot, seq, and in version 2 the hash.
        bytes.extend_from_slice(&rest[..if version == 2 { 26 } else { 18 }]);
        bytes.push(name.len() as u8);
        bytes.extend_from_slice(&name);
        bytes.extend_from_slice(&tag);
        prop_assert_eq!(Beat::decode(&bytes, &key), Err(Rejected::Forged));
    }
}
