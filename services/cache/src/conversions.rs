//! Proto ↔ cache: every request is checked against the configured limits in full before
//! anything is done with it, and every key and tag is put in the caller's namespace.

use std::sync::Arc;
use std::time::Duration;

use boardroom_cache::{Invalidation, Item};
use boardroom_proto::cache::v1 as pb;
use boardroom_runtime::config::CacheLimits;
use boardroom_runtime::status::Violations;
use bytes::Bytes;

use crate::error::CacheServiceError;
use crate::namespace::Namespace;

/// "`what` is `size`; the limit cache.limits.`limit` is `max`".
fn over(
    v: &mut Violations,
    field: impl Into<String>,
    what: &str,
    size: usize,
    limit: &str,
    max: usize,
) {
    v.add(
        field,
        format!("{what} is {size}; the limit cache.limits.{limit} is {max}"),
    );
}

fn check_batch(v: &mut Violations, field: &str, len: usize, limits: &CacheLimits) {
    if len == 0 {
        v.add(field, "must not be empty");
    } else if len > limits.max_batch {
        over(v, field, "the count", len, "max_batch", limits.max_batch);
    }
}

fn check_key(v: &mut Violations, field: &str, key: &str, limits: &CacheLimits) {
    if key.is_empty() {
        v.add(field, "must not be empty");
    } else if key.len() > limits.max_key_bytes {
        over(
            v,
            field,
            "the key length in bytes",
            key.len(),
            "max_key_bytes",
            limits.max_key_bytes,
        );
    }
}

fn check_tag(v: &mut Violations, field: &str, tag: &str, limits: &CacheLimits) {
    if tag.is_empty() {
        v.add(field, "must not be empty");
    } else if tag.len() > limits.max_tag_bytes {
        over(
            v,
            field,
            "the tag length in bytes",
            tag.len(),
            "max_tag_bytes",
            limits.max_tag_bytes,
        );
    }
}

/// One key, in the namespace.
pub fn key(ns: &Namespace, key: &str, limits: &CacheLimits) -> Result<String, CacheServiceError> {
    let mut v = Violations::default();
    check_key(&mut v, "key", key, limits);
    Ok(v.finish(ns.key(key))?)
}

/// A batch of keys, in the namespace.
pub fn keys(
    ns: &Namespace,
    keys: &[String],
    limits: &CacheLimits,
) -> Result<Vec<String>, CacheServiceError> {
    let mut v = Violations::default();
    check_batch(&mut v, "keys", keys.len(), limits);
    for (i, key) in keys.iter().enumerate() {
        check_key(&mut v, &format!("keys[{i}]"), key, limits);
    }
    Ok(v.finish(keys.iter().map(|key| ns.key(key)).collect())?)
}

/// A batch of tags, in the namespace.
pub fn tags(
    ns: &Namespace,
    tags: &[String],
    limits: &CacheLimits,
) -> Result<Vec<String>, CacheServiceError> {
    let mut v = Violations::default();
    check_batch(&mut v, "tags", tags.len(), limits);
    for (i, tag) in tags.iter().enumerate() {
        check_tag(&mut v, &format!("tags[{i}]"), tag, limits);
    }
    Ok(v.finish(tags.iter().map(|tag| ns.key(tag)).collect())?)
}

fn ttl(
    v: &mut Violations,
    field: String,
    ttl: Option<&prost_types::Duration>,
    limits: &CacheLimits,
) -> Duration {
    let Some(ttl) = ttl else {
        return Duration::from_millis(limits.default_ttl_ms);
    };
    let valid = ttl.seconds >= 0 && (0..1_000_000_000).contains(&ttl.nanos);
    let millis = u64::try_from(ttl.seconds)
        .unwrap_or(0)
        .saturating_mul(1000)
        .saturating_add(u64::try_from(ttl.nanos / 1_000_000).unwrap_or(0));
    if !valid {
        v.add(field, "must be a non-negative duration");
    } else if millis < limits.min_ttl_ms {
        v.add(
            field,
            format!(
                "is {millis} ms; the limit cache.limits.min_ttl_ms is {}",
                limits.min_ttl_ms
            ),
        );
    } else if millis > limits.max_ttl_ms {
        v.add(
            field,
            format!(
                "is {millis} ms; the limit cache.limits.max_ttl_ms is {}",
                limits.max_ttl_ms
            ),
        );
    }
    Duration::from_millis(millis)
}

fn entry(
    v: &mut Violations,
    field: &str,
    ns: &Namespace,
    entry: pb::Entry,
    limits: &CacheLimits,
) -> Item<Bytes> {
    check_key(v, &format!("{field}.key"), &entry.key, limits);
    if entry.value.len() > limits.max_value_bytes {
        over(
            v,
            format!("{field}.value"),
            "the value size in bytes",
            entry.value.len(),
            "max_value_bytes",
            limits.max_value_bytes,
        );
    }
    let ttl = ttl(v, format!("{field}.ttl"), entry.ttl.as_ref(), limits);
    if entry.tags.len() > limits.max_tags {
        over(
            v,
            format!("{field}.tags"),
            "the tag count",
            entry.tags.len(),
            "max_tags",
            limits.max_tags,
        );
    }
    for (i, tag) in entry.tags.iter().enumerate() {
        check_tag(v, &format!("{field}.tags[{i}]"), tag, limits);
    }
    Item {
        key: ns.key(&entry.key),
        value: entry.value,
        ttl,
        tags: entry
            .tags
            .iter()
            .map(|tag| Arc::from(ns.key(tag)))
            .collect(),
    }
}

/// Set's entry.
pub fn single_entry(
    ns: &Namespace,
    e: Option<pb::Entry>,
    limits: &CacheLimits,
) -> Result<Item<Bytes>, CacheServiceError> {
    let Some(e) = e else {
        return Err(CacheServiceError::invalid("entry", "required"));
    };
    let mut v = Violations::default();
    let item = entry(&mut v, "entry", ns, e, limits);
    Ok(v.finish(item)?)
}

/// SetMany's entries: all valid, or none written.
pub fn entries(
    ns: &Namespace,
    entries: Vec<pb::Entry>,
    limits: &CacheLimits,
) -> Result<Vec<Item<Bytes>>, CacheServiceError> {
    let mut v = Violations::default();
    check_batch(&mut v, "entries", entries.len(), limits);
    let items = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| entry(&mut v, &format!("entries[{i}]"), ns, e, limits))
        .collect();
    Ok(v.finish(items)?)
}

/// A lookup's answer.
pub fn lookup(key: String, value: Option<Bytes>) -> pb::Lookup {
    pb::Lookup {
        key,
        found: value.is_some(),
        value: value.unwrap_or_default(),
    }
}

/// What a watcher of `ns` hears of an invalidation; `None` when it is another namespace's.
pub fn invalidation(
    ns: &Namespace,
    invalidation: &Invalidation,
) -> Option<pb::WatchInvalidationsResponse> {
    use pb::watch_invalidations_response::Invalidated;
    let invalidated = match invalidation {
        Invalidation::Key(key) => Invalidated::Key(ns.strip(key)?.to_owned()),
        Invalidation::Tag(tag) => Invalidated::Tag(ns.strip(tag)?.to_owned()),
        Invalidation::All => Invalidated::Everything(true),
    };
    Some(pb::WatchInvalidationsResponse {
        invalidated: Some(invalidated),
    })
}
