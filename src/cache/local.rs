//! The hot path's copies of the current token's header: one per thread and cache.
//!
//! A request puts the token's `Authorization` header on, which clones a `HeaderValue`: a
//! reference count on its bytes. Were those bytes the cache's own, every request on every core
//! would write that one count, and two cores would spend their time passing its cache line
//! back and forth. So each thread keeps its own copy of the header of each cache it serves
//! (a few slots; a thread serving more caches than that copies again when it switches), taken
//! once per token, and a request writes only its thread's count.
//!
//! A copy is tagged with the cache's version, which changes (after the current token does)
//! each time the policy replaces or drops the token: a copy whose version is not the cache's
//! is taken again before it is used. The version is read before the token, so a change in
//! between can only make the next request take a copy again, never serve an older token under
//! a newer version. A copy is used only until the moment the policy published with the token
//! (`serve_until`: while it is fresh, or usable while nothing new can start), on Tokio's
//! clock; everything after goes to the policy.

use std::cell::RefCell;

use bytes::Bytes;
use http::HeaderValue;
use tokio::time::Instant;

use super::{Generation, Shared};

/// How many caches a thread keeps copies for.
const SLOTS: usize = 4;

thread_local! {
    static COPIES: RefCell<Copies> = const {
        RefCell::new(Copies {
            slots: [const { None }; SLOTS],
            next: 0,
        })
    };
}

struct Copies {
    slots: [Option<Copy>; SLOTS],
    /// The slot the next new cache takes (round robin).
    next: usize,
}

struct Copy {
    /// The cache's id (never reused, unlike an address).
    cache: u64,
    /// The cache's version the copy was taken at.
    version: u64,
    /// The header, its generation and until when it is served; `None` when the cache had no
    /// token then.
    token: Option<(HeaderValue, Generation, Instant)>,
}

/// The token's header and generation from this thread's copy, taken anew if the cache's
/// version moved, while the policy serves it without a decision; `None` otherwise (or when
/// the thread is being torn down).
#[inline]
pub(super) fn fresh_header(shared: &Shared) -> Option<(HeaderValue, Generation)> {
    // A new sign-in since the token was published: the policy drops it first.
    if !shared.same_source() {
        return None;
    }
    let version = shared.version();
    let now = Instant::now();
    COPIES
        .try_with(|copies| {
            let mut copies = copies.try_borrow_mut().ok()?;
            let slot = copies.slot(shared.id, version, shared)?;
            match &slot.token {
                Some((header, generation, serve_until)) if now < *serve_until => {
                    Some((header.clone(), *generation))
                }
                _ => None,
            }
        })
        .ok()
        .flatten()
}

impl Copies {
    /// This cache's copy at `version`, taken anew when missing or older.
    #[inline]
    fn slot(&mut self, cache: u64, version: u64, shared: &Shared) -> Option<&Copy> {
        let index = match self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.cache == cache))
        {
            Some(i) if self.slots[i].as_ref().is_some_and(|s| s.version == version) => i,
            Some(i) => {
                self.slots[i] = Some(copy(cache, version, shared));
                i
            }
            None => {
                let i = self.next;
                self.next = (self.next + 1) % SLOTS;
                self.slots[i] = Some(copy(cache, version, shared));
                i
            }
        };
        self.slots[index].as_ref()
    }
}

/// A copy of what the cache publishes now, tagged with `version` (read before it).
#[cold]
#[inline(never)]
fn copy(cache: u64, version: u64, shared: &Shared) -> Copy {
    let token = shared.current.load_full().and_then(|published| {
        let bytes = Bytes::copy_from_slice(published.entry.header.as_bytes());
        let mut header = HeaderValue::from_maybe_shared(bytes).ok()?;
        header.set_sensitive(true);
        Some((header, published.entry.generation(), published.serve_until))
    });
    Copy {
        cache,
        version,
        token,
    }
}
