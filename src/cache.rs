//! A model's response cache, and the coalescing of identical calls.
//!
//! [`ResponseCache`] holds finished answers in a moka cache bounded by
//! entries and bytes (least recently used first out) with a time-to-live.
//! Identical calls that arrive while one is running share its backend
//! call: moka runs one initialisation per key and the others wait for it.
//! If the call that runs it goes away (its client cancelled), one of the
//! waiters runs it instead, so a waiter is never failed by another
//! client's cancellation. A waiter whose own deadline is later than the
//! one that failed it with DEADLINE_EXCEEDED tries again.
//!
//! Only deterministic requests are cached (temperature 0, or a seed),
//! unless the model sets `cache_nondeterministic`: the key is the request
//! itself, encoded (model, input, max_tokens, temperature, stop, seed).

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use futures_util::FutureExt;
use metrics::{Counter, Gauge, counter, gauge};
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use prost::Message;
use tokio_stream::Stream;

use crate::config::CacheConfig;
use crate::error::Error;
use crate::metrics::{
    CACHE_BYTES, CACHE_COALESCED_TOTAL, CACHE_ENTRIES, CACHE_HITS_TOTAL, CACHE_MISSES_TOTAL,
};
use crate::outcome::{Outcome, StreamItem};
use crate::proto;

/// The proto tag of `GenerateRequest.priority`, left out of cache keys.
const PRIORITY_TAG: u32 = 8;

/// Bytes charged per entry beyond its key and text: the outcome, the
/// route's strings and moka's own bookkeeping, roughly.
const ENTRY_OVERHEAD: u64 = 256;

/// What a client asked of the cache (`cache-control` metadata).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Directive {
    /// Serve from the cache when possible.
    #[default]
    Use,
    /// `no-cache`: run the backend, then store the fresh answer.
    Refresh,
    /// `no-store`: leave the cache alone.
    Skip,
}

impl Directive {
    /// The directive of a `cache-control` value: `no-store` wins over
    /// `no-cache`; anything else is [`Directive::Use`].
    pub fn parse(value: &str) -> Directive {
        let mut directive = Directive::Use;
        for part in value.split(',') {
            match part.trim().to_ascii_lowercase().as_str() {
                "no-store" => return Directive::Skip,
                "no-cache" => directive = Directive::Refresh,
                _ => {}
            }
        }
        directive
    }
}

/// An answer as stored: shared by every hit.
pub(crate) type Entry = Arc<Outcome>;

/// How a lookup was answered.
pub(crate) enum Lookup {
    /// From the cache.
    Hit(Entry),
    /// By this call's own backend call (now stored).
    Miss(Entry),
    /// By an identical call's backend call.
    Coalesced(Entry),
}

/// One model's response cache.
pub(crate) struct ResponseCache {
    model: String,
    cache: Cache<Vec<u8>, Entry>,
    nondeterministic: bool,
    max_bytes: u64,
    sizes: Arc<Sizes>,
    /// Calls inside [`Self::get_or_run`] past the cache lookup.
    in_flight: AtomicU64,
    hits: Counter,
    misses: Counter,
    coalesced: Counter,
}

/// What the cache holds, kept by insertions and moka's removal listener.
struct Sizes {
    entries: AtomicU64,
    bytes: AtomicU64,
    entries_gauge: Gauge,
    bytes_gauge: Gauge,
}

impl Sizes {
    fn add(&self, bytes: u64) {
        let entries = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.entries_gauge.set(entries as f64);
        self.bytes_gauge.set(total as f64);
    }

    fn remove(&self, bytes: u64) {
        let entries = self
            .entries
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        let total = self
            .bytes
            .fetch_sub(bytes, Ordering::Relaxed)
            .saturating_sub(bytes);
        self.entries_gauge.set(entries as f64);
        self.bytes_gauge.set(total as f64);
    }
}

/// Counts a call in [`ResponseCache::get_or_run`] until dropped, however
/// the call ends.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes an entry takes, as charged against `max_bytes`.
fn entry_bytes(key: &[u8], outcome: &Outcome) -> u64 {
    let route: usize =
        outcome.route.tried.iter().map(String::len).sum::<usize>() + outcome.route.model.len();
    (key.len() + outcome.text.len() + route) as u64 + ENTRY_OVERHEAD
}

impl ResponseCache {
    /// The cache of `model`, bounded by `config`.
    pub(crate) fn new(model: &str, config: &CacheConfig, nondeterministic: bool) -> Self {
        let label = || model.to_string();
        crate::metrics::recorder();
        let sizes = Arc::new(Sizes {
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            entries_gauge: gauge!(CACHE_ENTRIES, "model" => label()),
            bytes_gauge: gauge!(CACHE_BYTES, "model" => label()),
        });
        sizes.entries_gauge.set(0.0);
        sizes.bytes_gauge.set(0.0);
        // Both bounds with one weight: an entry weighs its bytes in units
        // of max_bytes / max_entries, at least 1, against a capacity of
        // max_entries. So there are at most max_entries entries, and their
        // bytes are at most weight × unit summed, at most max_bytes.
        let unit = (config.max_bytes / config.max_entries).max(1);
        let weigh = move |key: &Vec<u8>, value: &Entry| {
            u32::try_from(entry_bytes(key, value).div_ceil(unit).max(1)).unwrap_or(u32::MAX)
        };
        let listener_sizes = sizes.clone();
        let cache = Cache::builder()
            .max_capacity(config.max_entries)
            .weigher(weigh)
            .time_to_live(config.ttl())
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |key: Arc<Vec<u8>>, value: Entry, _cause| {
                listener_sizes.remove(entry_bytes(&key, &value));
            })
            .build();
        ResponseCache {
            model: model.to_string(),
            cache,
            nondeterministic,
            max_bytes: config.max_bytes,
            sizes,
            in_flight: AtomicU64::new(0),
            hits: counter!(CACHE_HITS_TOTAL, "model" => label()),
            misses: counter!(CACHE_MISSES_TOTAL, "model" => label()),
            coalesced: counter!(CACHE_COALESCED_TOTAL, "model" => label()),
        }
    }

    /// The key of a request, or `None` when it may not be cached: sampled
    /// output (a temperature above 0, or none given, and no seed) differs
    /// from call to call, unless the model says its backend ignores that.
    pub(crate) fn key(&self, request: &proto::GenerateRequest) -> Option<Vec<u8>> {
        let deterministic = request.seed.is_some() || request.temperature == Some(0.0);
        (deterministic || self.nondeterministic).then(|| {
            let mut key = request.encode_to_vec();
            // A call's priority orders it in the queue; it does not change
            // the answer. prost writes fields in tag order, so `priority`
            // (the last tag) is the key's tail.
            if request.priority != 0 {
                let tail = prost::encoding::uint32::encoded_len(PRIORITY_TAG, &request.priority);
                key.truncate(key.len().saturating_sub(tail));
            }
            key
        })
    }

    /// The cached answer to `key`, if any.
    pub(crate) async fn get(&self, key: &[u8]) -> Option<Entry> {
        let hit = self.cache.get(key).await;
        if hit.is_some() {
            self.hits.increment(1);
        }
        hit
    }

    /// Stores an answer (one made outside [`Self::get_or_run`]: a stream's,
    /// or a refresh's). Answers larger than the whole cache are not kept.
    pub(crate) async fn insert(&self, key: Vec<u8>, outcome: Outcome) {
        let bytes = entry_bytes(&key, &outcome);
        if bytes > self.max_bytes {
            return;
        }
        self.sizes.add(bytes);
        self.cache.insert(key, Arc::new(outcome)).await;
    }

    /// The answer to `key`: cached, shared with an identical call already
    /// running, or made by `run` (and stored). `run` is not called when
    /// the answer comes another way. An error is shared with the calls
    /// that waited on it; errors are not stored.
    pub(crate) async fn get_or_run<F>(&self, key: &[u8], run: F) -> Result<Lookup, Error>
    where
        F: Future<Output = Result<Outcome, Error>>,
    {
        if let Some(hit) = self.get(key).await {
            return Ok(Lookup::Hit(hit));
        }
        let _in_flight = InFlight::enter(&self.in_flight);
        let sizes = &self.sizes;
        let init = async move {
            let outcome = run.await?;
            let bytes = entry_bytes(key, &outcome);
            // Counted now; the removal listener uncounts it, including
            // when moka refuses an entry heavier than the whole cache.
            sizes.add(bytes);
            Ok::<_, Error>(Arc::new(outcome))
        };
        // moka gives up (panics) after 200 waits whose running call was
        // dropped: a client that cancels identical calls again and again
        // could make a waiter panic. That waiter fails instead.
        let entry = AssertUnwindSafe(self.cache.entry_by_ref(key).or_try_insert_with(init))
            .catch_unwind()
            .await
            .map_err(|_| Error::Dropped {
                model: self.model.clone(),
            })?
            .map_err(|shared: Arc<Error>| (*shared).clone())?;
        if entry.is_fresh() {
            self.misses.increment(1);
            Ok(Lookup::Miss(entry.into_value()))
        } else {
            self.coalesced.increment(1);
            Ok(Lookup::Coalesced(entry.into_value()))
        }
    }

    /// Counts a call that ran the backend because it was not in the cache
    /// (for streams, which do not use [`Self::get_or_run`]).
    pub(crate) fn missed(&self) {
        self.misses.increment(1);
    }

    /// Answers and bytes held, once pending evictions are done, and the
    /// calls between lookup and answer.
    pub(crate) async fn size(&self) -> (u64, u64, u64) {
        self.cache.run_pending_tasks().await;
        (
            self.sizes.entries.load(Ordering::Relaxed),
            self.sizes.bytes.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
        )
    }
}

/// A live stream that stores its answer in the cache when it ends well:
/// its text is collected as it passes (up to the cache's `max_bytes`;
/// a longer answer is not stored).
pub(crate) struct Storing<S> {
    inner: S,
    cache: Arc<ResponseCache>,
    key: Option<Vec<u8>>,
    text: String,
}

impl<S> Storing<S> {
    pub(crate) fn new(inner: S, cache: Arc<ResponseCache>, key: Vec<u8>) -> Self {
        Storing {
            inner,
            cache,
            key: Some(key),
            text: String::new(),
        }
    }
}

impl<S> Stream for Storing<S>
where
    S: Stream<Item = Result<StreamItem, Error>> + Unpin,
{
    type Item = Result<StreamItem, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = ready!(Pin::new(&mut this.inner).poll_next(cx));
        match &item {
            Some(Ok(StreamItem::Text(text))) if this.key.is_some() => {
                if (this.text.len() + text.len()) as u64 > this.cache.max_bytes {
                    this.key = None;
                    this.text = String::new();
                } else {
                    this.text.push_str(text);
                }
            }
            Some(Ok(StreamItem::Done(outcome))) => {
                if let Some(key) = this.key.take() {
                    let mut stored = outcome.clone();
                    stored.text = std::mem::take(&mut this.text);
                    let cache = this.cache.clone();
                    // Stored off the stream's path; moka's insert is async.
                    tokio::spawn(async move { cache.insert(key, stored).await });
                }
            }
            _ => {}
        }
        Poll::Ready(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives() {
        assert_eq!(Directive::parse("no-cache"), Directive::Refresh);
        assert_eq!(Directive::parse("No-Store"), Directive::Skip);
        assert_eq!(Directive::parse("no-cache, no-store"), Directive::Skip);
        assert_eq!(Directive::parse("max-age=3"), Directive::Use);
    }

    #[test]
    fn only_deterministic_requests_have_keys() {
        let config = CacheConfig::default();
        let cache = ResponseCache::new("k", &config, false);
        let mut request = proto::GenerateRequest {
            model: "k".into(),
            prompt: "hi".into(),
            ..Default::default()
        };
        assert!(cache.key(&request).is_none(), "no temperature, no seed");
        request.temperature = Some(0.7);
        assert!(cache.key(&request).is_none());
        request.seed = Some(1);
        assert!(cache.key(&request).is_some());
        request.seed = None;
        request.temperature = Some(0.0);
        let key = cache.key(&request);
        assert!(key.is_some());
        request.prompt = "hi!".into();
        assert_ne!(cache.key(&request), key, "the input is in the key");
        let plain = cache.key(&request);
        for priority in [1, 100] {
            request.priority = priority;
            assert_eq!(cache.key(&request), plain, "the priority is not");
        }
        let loose = ResponseCache::new("k", &config, true);
        request.temperature = Some(1.0);
        assert!(loose.key(&request).is_some());
    }
}
