//! The heartbeat on the wire: one UDP datagram, authenticated with HMAC-SHA-256
//! over everything before the tag, and ordered by `(boot, seq)` so a recorded beat
//! can never be played back.
//!
//! ```text
//! magic "SUHB" | version u8 | state u8 | priority u8 | healthy u8
//! boot u64 | seq u64 | config [8] | name_len u8 | name | tag [16]
//! ```
//!
//! `boot` is the sender's start time in nanoseconds since the epoch: it grows across
//! restarts, so a restarted node's beats are accepted while an old run's are not.
//! `config` is the first 8 bytes of the SHA-256 of the sender's site file
//! ([`config_hash`]), so each node sees whether its peer runs the same file; it is
//! under the tag, so nobody but the peer can make the two look alike or different.
//!
//! Version 2 added `config`; version 1 is the same without it. Both are read, and a
//! beat without a hash is sent in version 1: during a rolling upgrade of the pair the
//! new node answers an old peer in the version the peer reads (see `node.rs`), so the
//! two never lose sight of each other and both take the address. A datagram of any
//! other version is refused as [`Rejected::Version`] before anything else is read.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const MAGIC: &[u8; 4] = b"SUHB";
/// The newest wire version this release speaks (see the module doc for the others).
pub const VERSION: u8 = 2;
/// The version before the site file's hash, still read and, to an old peer, sent.
pub const VERSION_WITHOUT_CONFIG: u8 = 1;
const TAG_LEN: usize = 16;
/// Bytes of the site file's SHA-256 a beat carries: 64 bits, plenty to tell two
/// files apart (nobody can forge one under the tag), 16 hex digits to read.
pub const CONFIG_HASH_LEN: usize = 8;
/// Bytes before the hash (or, in version 1, the name's length): magic, version,
/// state, priority, healthy, boot, seq.
const HEAD: usize = 4 + 4 + 16;
/// Longest datagram a beat can be; reading buffers are this size.
pub const MAX_BEAT: usize = HEAD + CONFIG_HASH_LEN + 1 + 255 + TAG_LEN;

/// A site file's identity in heartbeats: the first [`CONFIG_HASH_LEN`] bytes of the
/// SHA-256 of its bytes, as read at start.
pub type ConfigHash = [u8; CONFIG_HASH_LEN];

/// The [`ConfigHash`] of a site file's bytes.
pub fn config_hash(file: &[u8]) -> ConfigHash {
    use sha2::Digest;
    let full = Sha256::digest(file);
    let mut out = [0u8; CONFIG_HASH_LEN];
    out.copy_from_slice(&full[..CONFIG_HASH_LEN]);
    out
}

/// A [`ConfigHash`] as 16 lowercase hex digits, as status pages and logs show it.
pub fn hex(hash: &ConfigHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a node says about itself in each beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Holds the floating address.
    Active,
    /// Watches the active node, ready to take over.
    Passive,
    /// Stopping on purpose: the peer should take over now, not after missed beats.
    Leaving,
}

impl State {
    fn code(self) -> u8 {
        match self {
            State::Active => 1,
            State::Passive => 2,
            State::Leaving => 3,
        }
    }

    fn from_code(code: u8) -> Option<State> {
        match code {
            1 => Some(State::Active),
            2 => Some(State::Passive),
            3 => Some(State::Leaving),
            _ => None,
        }
    }

    /// The word used in status pages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Passive => "passive",
            State::Leaving => "leaving",
        }
    }
}

/// One heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    /// The sender's node name.
    pub name: String,
    /// The sender's state.
    pub state: State,
    /// The sender's effective priority (lowered when its backends are all down).
    pub priority: u8,
    /// Whether the sender has at least one healthy backend.
    pub healthy: bool,
    /// When the sender's process started (ns since the epoch).
    pub boot: u64,
    /// Counts up with every beat of one boot.
    pub seq: u64,
    /// The sender's site file ([`config_hash`]); `None` in a version-1 beat, which
    /// is what an older release sends (and what is sent to it).
    pub config: Option<ConfigHash>,
}

/// Why a datagram was not accepted as a beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not a beat at all.
    Malformed,
    /// A beat of another wire version (this number): the peer runs another scaleup
    /// release. Checked before the tag, since the layout is unknown.
    Version(u8),
    /// The tag does not match: wrong secret, or forged.
    Forged,
    /// Authentic, but not newer than a beat already seen: a replay.
    Replayed,
}

impl Rejected {
    /// The word used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::Version(_) => "version",
            Rejected::Forged => "forged",
            Rejected::Replayed => "replayed",
        }
    }
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// The first `TAG_LEN` bytes of HMAC-SHA-256(secret, parts...).
pub fn tag(secret: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
    let mut mac = mac(secret);
    for part in parts {
        mac.update(part);
    }
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&full[..TAG_LEN]);
    out
}

/// Whether `given` is the tag of `parts`, compared in constant time.
pub fn verify(secret: &[u8], parts: &[&[u8]], given: &[u8]) -> bool {
    given.len() == TAG_LEN && tag(secret, parts).ct_eq(given).into()
}

impl Beat {
    /// The datagram for this beat, signed with `secret`.
    pub fn encode(&self, secret: &[u8]) -> Vec<u8> {
        // The length is one byte: a longer name is cut, at a character boundary so
        // that what arrives is still UTF-8 (cut inside a character, every beat of this
        // node would be refused as malformed).
        let mut end = self.name.len().min(255);
        while !self.name.is_char_boundary(end) {
            end -= 1;
        }
        let name = &self.name.as_bytes()[..end];
        let mut out = Vec::with_capacity(MAX_BEAT);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[
            match self.config {
                Some(_) => VERSION,
                None => VERSION_WITHOUT_CONFIG,
            },
            self.state.code(),
            self.priority,
            u8::from(self.healthy),
        ]);
        out.extend_from_slice(&self.boot.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        if let Some(config) = &self.config {
            out.extend_from_slice(config);
        }
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        let tag = tag(secret, &[&out]);
        out.extend_from_slice(&tag);
        out
    }

    /// Reads and authenticates a datagram (replay is checked by [`ReplayGuard`]).
    pub fn decode(bytes: &[u8], secret: &[u8]) -> Result<Beat, Rejected> {
        if bytes.len() < 5 || &bytes[..4] != MAGIC {
            return Err(Rejected::Malformed);
        }
        let fixed = match bytes[4] {
            VERSION => HEAD + CONFIG_HASH_LEN,
            VERSION_WITHOUT_CONFIG => HEAD,
            other => return Err(Rejected::Version(other)),
        };
        if bytes.len() < fixed + 1 + TAG_LEN {
            return Err(Rejected::Malformed);
        }
        let name_len = bytes[fixed] as usize;
        let body_len = fixed + 1 + name_len;
        if bytes.len() != body_len + TAG_LEN {
            return Err(Rejected::Malformed);
        }
        let (body, given) = bytes.split_at(body_len);
        if !verify(secret, &[body], given) {
            return Err(Rejected::Forged);
        }
        let state = State::from_code(bytes[5]).ok_or(Rejected::Malformed)?;
        let name = std::str::from_utf8(&body[fixed + 1..]).map_err(|_| Rejected::Malformed)?;
        Ok(Beat {
            name: name.to_string(),
            state,
            priority: bytes[6],
            healthy: bytes[7] != 0,
            boot: u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
            seq: u64::from_be_bytes(bytes[16..24].try_into().expect("8 bytes")),
            config: (fixed > HEAD).then(|| {
                bytes[HEAD..fixed]
                    .try_into()
                    .expect("CONFIG_HASH_LEN bytes")
            }),
        })
    }
}

/// Accepts each peer's beats only in increasing `(boot, seq)` order.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    last: Option<(u64, u64)>,
}

impl ReplayGuard {
    /// Whether `beat` is newer than every beat accepted before; remembers it if so.
    pub fn admit(&mut self, beat: &Beat) -> Result<(), Rejected> {
        let key = (beat.boot, beat.seq);
        match self.last {
            Some(last) if key <= last => Err(Rejected::Replayed),
            _ => {
                self.last = Some(key);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(seq: u64) -> Beat {
        Beat {
            name: "lb1".into(),
            state: State::Active,
            priority: 150,
            healthy: true,
            boot: 1_700_000_000_000_000_000,
            seq,
            config: Some(config_hash(b"[site]\nname = \"www.foobar.com\"\n")),
        }
    }

    #[test]
    fn round_trip_and_authentication() {
        let bytes = beat(7).encode(b"s3cret");
        assert_eq!(Beat::decode(&bytes, b"s3cret").unwrap(), beat(7));
        assert_eq!(Beat::decode(&bytes, b"wrong"), Err(Rejected::Forged));
        let mut tampered = bytes.clone();
        tampered[6] = 255; // raise the priority in flight
        assert_eq!(Beat::decode(&tampered, b"s3cret"), Err(Rejected::Forged));
        assert_eq!(Beat::decode(b"hello", b"s3cret"), Err(Rejected::Malformed));
        assert_eq!(
            Beat::decode(&bytes[..bytes.len() - 1], b"s3cret"),
            Err(Rejected::Malformed)
        );
    }

    #[test]
    fn the_site_files_hash_travels_signed() {
        let bytes = beat(3).encode(b"s3cret");
        assert_eq!(bytes[4], VERSION);
        let decoded = Beat::decode(&bytes, b"s3cret").unwrap();
        assert_eq!(decoded.config, beat(3).config);
        // Another file, another hash: the receiver can tell.
        let mut other = beat(3);
        other.config = Some(config_hash(b"[site]\nname = \"www.foobar.org\"\n"));
        assert_ne!(other.config, beat(3).config);
        assert_eq!(
            Beat::decode(&other.encode(b"s3cret"), b"s3cret").unwrap(),
            other
        );
        // The hash is under the tag: changed in flight, the beat is forged.
        let mut tampered = bytes.clone();
        tampered[HEAD] ^= 1;
        assert_eq!(Beat::decode(&tampered, b"s3cret"), Err(Rejected::Forged));
        // SHA-256("abc") starts ba7816bf8f01cfea.
        assert_eq!(hex(&config_hash(b"abc")), "ba7816bf8f01cfea");
    }

    #[test]
    fn a_version_1_beat_is_read_and_written_as_an_older_release_does() {
        // Version 1 byte for byte, as the release before the hash built it.
        let mut body = b"SUHB".to_vec();
        body.extend_from_slice(&[1, 2, 100, 1]);
        body.extend_from_slice(&7u64.to_be_bytes());
        body.extend_from_slice(&9u64.to_be_bytes());
        body.push(3);
        body.extend_from_slice(b"lb2");
        let mut old = body.clone();
        old.extend_from_slice(&tag(b"s3cret", &[&body]));
        let expected = Beat {
            name: "lb2".into(),
            state: State::Passive,
            priority: 100,
            healthy: true,
            boot: 7,
            seq: 9,
            config: None,
        };
        assert_eq!(Beat::decode(&old, b"s3cret"), Ok(expected.clone()));
        // And a beat without a hash is written exactly so, for an old peer to read.
        assert_eq!(expected.encode(b"s3cret"), old);
        let mut forged = old.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(Beat::decode(&forged, b"s3cret"), Err(Rejected::Forged));
    }

    #[test]
    fn a_beat_of_an_unknown_version_says_so() {
        let mut newer = beat(1).encode(b"s3cret");
        newer[4] = 3;
        assert_eq!(Beat::decode(&newer, b"s3cret"), Err(Rejected::Version(3)));
        assert_eq!(Rejected::Version(3).as_str(), "version");
        newer[4] = 0;
        assert_eq!(Beat::decode(&newer, b"s3cret"), Err(Rejected::Version(0)));
        assert_eq!(Beat::decode(b"SUHB", b"s3cret"), Err(Rejected::Malformed));
    }

    #[test]
    fn replays_and_old_boots_are_refused() {
        let mut guard = ReplayGuard::default();
        assert!(guard.admit(&beat(1)).is_ok());
        assert!(guard.admit(&beat(2)).is_ok());
        assert_eq!(guard.admit(&beat(2)), Err(Rejected::Replayed));
        assert_eq!(guard.admit(&beat(1)), Err(Rejected::Replayed));
        let mut restarted = beat(0);
        restarted.boot += 1;
        assert!(
            guard.admit(&restarted).is_ok(),
            "a new boot starts its own sequence"
        );
        assert_eq!(
            guard.admit(&beat(3)),
            Err(Rejected::Replayed),
            "the old boot is over"
        );
    }
}
