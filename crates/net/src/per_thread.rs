//! State kept once per serving-thread index, so that the serving threads of a
//! listener never contend for it.
//!
//! A lock or a counter shared by the serving threads and taken on every request is
//! one a thread can be preempted holding, stalling the other thread's requests for
//! the rest of its time slice (what the load balancer's slowest requests were made
//! of: see `Shutdown::relay`). Each slot here has cache lines of its own, so two
//! threads writing their own slots do not pull one line back and forth either.
//!
//! The index is [`crate::server::thread_index`]: the threads of one index (one per
//! listener, and the node's own runtime at 0) share a slot, which is still correct,
//! only no longer uncontended.

/// One `T` per serving-thread index.
#[derive(Debug)]
pub struct PerThread<T> {
    slots: Box<[Padded<T>]>,
}

/// A slot on cache lines of its own: 128 bytes, as the x86 prefetcher pulls lines
/// in pairs.
#[derive(Debug)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T> PerThread<T> {
    /// A slot per serving thread, each made by `make`.
    pub fn new(mut make: impl FnMut() -> T) -> PerThread<T> {
        PerThread {
            slots: (0..crate::server::serving_threads())
                .map(|_| Padded(make()))
                .collect(),
        }
    }

    /// The calling thread's slot.
    pub fn mine(&self) -> &T {
        &self.slots[crate::server::thread_index() % self.slots.len()].0
    }

    /// Every slot.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|slot| &slot.0)
    }
}
