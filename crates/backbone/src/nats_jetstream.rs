//! The backbone on NATS JetStream.
//!
//! One stream, `P_events`, with a subject per thread, `P.ev.{thread}`. Each
//! append is **one message** holding that append's events (a JSON array of
//! envelopes) and the header `Aw-Last-Seq` (its last `seq`), published with
//! `Nats-Expected-Last-Subject-Sequence` set to the stream sequence of the
//! thread's last message: JetStream stores it only if no other node appended
//! to the thread meanwhile, which is the compare-and-set [`ClusterLog`] needs,
//! and a batch is all or nothing because it is one message.
//!
//! Key-value buckets hold the rest: `P_threads` (owner, oldest retained `seq`
//! and the runs' state as retention left it, created with `create`, so two
//! nodes cannot both claim a thread),
//! `P_runs` (registrations), `P_running` (runs not yet ended) and `P_nodes`
//! (each node's heartbeat as an expiry time). Run ids carry characters keys
//! may not, so their keys are hex.
//!
//! Reads walk the thread's messages with "next message for subject from
//! sequence" requests; a per-thread index of `seq` → stream sequence, learnt
//! from every message seen, lets a read start near `after_seq` rather than at
//! the thread's first message. Nodes follow every thread with one ordered
//! consumer on `P.ev.>`. The stream has no limits of its own, so that feed
//! never drops a message a node has not read; only retention removes
//! messages, and those hold events already trimmed.
//!
//! [`ClusterLog`]: crate::ClusterLog

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agentwire_log::StoredEvent;
use agentwire_protocol::{RunId, ThreadId, UserId};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind, StorageType};
use async_nats::jetstream::{self, Context, message::StreamMessage};
use async_nats::{HeaderMap, connection::State};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    Backbone, BackboneError, Extent, Follower, Outcome, Position, RunEntry, Running, RunningChange, RunsMark,
    SETTLE_FOR, Tail, ThreadMeta, TrimmedRuns, decode, decode_events, encode, from_key_safe, key_safe,
};

/// A request that gets no answer in this long fails (`503`), rather than hanging a publisher.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Most messages one look for the oldest threads reads.
const OLDEST_WALK: usize = 10_000;
/// Index entries kept per thread (the newest; older reads start further back).
const INDEX_PER_THREAD: usize = 4096;
/// Index entries kept in all (with the map's overhead, under 100 bytes each).
const INDEX_ENTRIES: u64 = 1 << 16;
const LAST_SEQ: &str = "Aw-Last-Seq";
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
const MSG_ID: &str = "Nats-Msg-Id";
/// Room left in a message for its subject and headers, which count against max_payload too.
const HEADER_ALLOWANCE: usize = 512;

/// The read index's weight: its entries, so a cap bounds memory, not threads.
#[derive(Clone)]
struct IndexWeight;

impl quick_cache::Weighter<ThreadId, BTreeMap<u64, u64>> for IndexWeight {
    fn weight(&self, _: &ThreadId, map: &BTreeMap<u64, u64>) -> u64 {
        map.len() as u64 + 1
    }
}

type IndexCache = quick_cache::unsync::Cache<ThreadId, BTreeMap<u64, u64>, IndexWeight>;

/// Notes that the message at `stream_seq` ends with `last_seq` of `thread`.
fn learn(index: &mut IndexCache, thread: &ThreadId, last_seq: u64, stream_seq: u64) {
    let made = index.get_mut_or_insert_with(thread, || Ok::<_, std::convert::Infallible>(BTreeMap::new()));
    if let Ok(Some(mut map)) = made {
        map.insert(last_seq, stream_seq);
        if map.len() > INDEX_PER_THREAD {
            map.pop_first();
        }
    }
}

/// A thread's record in the `P_threads` bucket.
#[derive(Debug, Serialize, Deserialize)]
struct ThreadRecord {
    owner: UserId,
    oldest_seq: u64,
    #[serde(default)]
    by_publisher: bool,
    /// The runs' state as retention left it (see [`TrimmedRuns`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    runs: Option<TrimmedRuns>,
}

/// The NATS JetStream backbone. See the module docs.
pub struct NatsBackbone {
    client: async_nats::Client,
    js: Context,
    stream: stream::Stream,
    prefix: String,
    threads: kv::Store,
    runs: kv::Store,
    running: kv::Store,
    /// The stream under `running`: an ended run's entry is purged from it, not
    /// deleted, since a delete leaves a marker that every listing of the
    /// running runs would read again, for ever.
    running_stream: stream::Stream,
    /// The stream under `runs`, where forgotten registrations are purged.
    runs_stream: stream::Stream,
    nodes: kv::Store,
    /// thread → (last `seq` of a message → its stream sequence), bounded by
    /// entries in all: the least used threads' give way, and a read without
    /// one starts further back.
    index: Mutex<IndexCache>,
}

fn unavailable(e: impl std::fmt::Display) -> BackboneError {
    BackboneError::Unavailable(format!("nats: {e}"))
}

fn corrupt(e: impl std::fmt::Display) -> BackboneError {
    BackboneError::Corrupt(format!("nats: {e}"))
}

fn to_json<T: Serialize>(value: &T) -> Result<Bytes, BackboneError> {
    encode(value).map(Bytes::from)
}

/// The last `seq` a stored message holds.
fn last_seq(message: &StreamMessage) -> Result<u64, BackboneError> {
    message
        .headers
        .get(LAST_SEQ)
        .and_then(|v| v.as_str().parse().ok())
        .ok_or_else(|| corrupt(format!("message {} has no {LAST_SEQ}", message.sequence)))
}

/// Opens a key-value bucket, creating it if missing. The bucket's stream is
/// created here with the settings a KV bucket has (as the client would), because
/// the client's own `create_key_value` first reads account figures in a shape
/// NATS 2.9 does not send.
async fn bucket(js: &Context, name: String, replicas: usize) -> Result<kv::Store, BackboneError> {
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    let config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(unavailable)?;
    js.get_key_value(&name).await.map_err(unavailable)
}

/// One node's latest heartbeat: when the NATS server stored it, on the
/// server's clock, and the TTL it announced.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub node: String,
    pub written_ms: i64,
    pub ttl_ms: u64,
}

/// The nodes whose heartbeat has not lapsed, judged on the server's clock
/// alone: "now" is the newest heartbeat stored (the caller's own, just sent),
/// so no node's clock is compared with another's.
pub fn live_by_server_time(beats: &[Heartbeat]) -> HashSet<String> {
    let Some(now) = beats.iter().map(|b| b.written_ms).max() else { return HashSet::new() };
    beats
        .iter()
        .filter(|b| b.written_ms.saturating_add(i64::try_from(b.ttl_ms).unwrap_or(i64::MAX)) >= now)
        .map(|b| b.node.clone())
        .collect()
}

/// What a stream's settings leave open for an acknowledged message to be lost.
pub fn durability_gap(stream: &str, storage: StorageType, replicas: usize) -> Option<String> {
    if storage == StorageType::Memory {
        return Some(format!("jetstream stream {stream} is kept in memory: a NATS restart loses it"));
    }
    // One copy is flushed to disk every `sync_interval` (2 min unless the server
    // sets `sync_interval: always`), which a client cannot read: not provably durable.
    (replicas < 3).then(|| {
        format!(
            "jetstream stream {stream} has {replicas} replica(s): a crash of a machine loses what it acknowledged \
             but had not yet synced to disk; run 3 replicas (--backbone-replicas 3)"
        )
    })
}

impl NatsBackbone {
    /// Connects to `url` (`nats://host:port`) and creates the deployment's
    /// stream and buckets if they are missing.
    /// `replicas` is what streams and buckets are created with (existing ones keep theirs).
    pub async fn connect(url: &str, prefix: &str, replicas: usize) -> Result<Self, BackboneError> {
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            // Keep reconnecting for as long as the node lives: an outage is served with 503s, not a crash.
            .max_reconnects(None);
        let client = options.connect(url).await.map_err(unavailable)?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        let config = stream::Config {
            name: format!("{prefix}_events"),
            subjects: vec![format!("{prefix}.ev.>")],
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let stream = js.get_or_create_stream(config).await.map_err(unavailable)?;
        Ok(Self {
            threads: bucket(&js, format!("{prefix}_threads"), replicas).await?,
            runs: bucket(&js, format!("{prefix}_runs"), replicas).await?,
            running: bucket(&js, format!("{prefix}_running"), replicas).await?,
            running_stream: js.get_stream(format!("KV_{prefix}_running")).await.map_err(unavailable)?,
            runs_stream: js.get_stream(format!("KV_{prefix}_runs")).await.map_err(unavailable)?,
            nodes: bucket(&js, format!("{prefix}_nodes"), replicas).await?,
            client,
            js,
            stream,
            prefix: prefix.to_owned(),
            index: Mutex::new(IndexCache::with_weighter(16_384, INDEX_ENTRIES, IndexWeight)),
        })
    }

    /// Removes the thread's messages whose events all come before `keep_from`.
    async fn remove_before(&self, thread: &ThreadId, keep_from: u64) -> Result<(), BackboneError> {
        // Find the first message that holds an event to keep; everything before it goes.
        let subject = self.subject(thread);
        let mut from = 1;
        let mut first_kept = None;
        let mut last = None;
        while let Some(message) = self.next_message(&subject, from).await? {
            if last_seq(&message)? >= keep_from {
                first_kept = Some(message);
                break;
            }
            from = message.sequence + 1;
            last = Some(message);
        }
        let first_kept = match (first_kept, last) {
            // Nothing before it: nothing to remove (and a purge up to the stream's
            // first sequence, 1, would be taken for a purge of the whole subject).
            (Some(_), None) => return Ok(()),
            (Some(kept), _) => kept,
            // Every event goes, but the thread's last message carries its head:
            // a marker holding no events takes its place, so that nothing old
            // stays at the front of the stream (retention by age walks from there).
            (None, Some(last)) => match self.head_marker(thread, &last).await? {
                Some(marker) => marker,
                // An append came meanwhile: it is the first message kept.
                None => return Box::pin(self.remove_before(thread, keep_from)).await,
            },
            (None, None) => return Ok(()),
        };
        self.stream.purge().filter(&subject).sequence(first_kept.sequence).await.map_err(unavailable)?;
        // A marker holds no events: the thread keeps none, and starts after its head.
        let oldest = decode_events(&first_kept.payload)?.first().map_or(keep_from, |e| e.seq());
        if let Some(entry) = self.threads.entry(thread.as_str()).await.map_err(unavailable)? {
            let mut record: ThreadRecord = decode(&entry.value)?;
            if oldest > record.oldest_seq {
                record.oldest_seq = oldest;
                self.threads.update(thread.as_str(), to_json(&record)?, entry.revision).await.map_err(unavailable)?;
            }
        }
        let mut index = self.index.lock();
        if let Some(mut map) = index.get_mut(thread) {
            map.retain(|_, stream_seq| *stream_seq >= first_kept.sequence);
        }
        Ok(())
    }

    /// Publishes a message with no events after `last`, the thread's last
    /// message, carrying the same head; `None` if another append came first.
    async fn head_marker(
        &self,
        thread: &ThreadId,
        last: &StreamMessage,
    ) -> Result<Option<StreamMessage>, BackboneError> {
        let head = last_seq(last)?;
        let mut headers = HeaderMap::new();
        headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE, last.sequence.to_string().as_str());
        headers.insert(LAST_SEQ, head.to_string().as_str());
        let subject = self.subject(thread);
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, Bytes::from_static(b"[]"))
            .await
            .map_err(unavailable)?;
        let sequence = match ack.await {
            Ok(ack) => ack.sequence,
            Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        self.next_message(&subject, sequence).await
    }

    /// What became of an append whose acknowledgement was lost (`lost`): it is
    /// sent again, with the same `Nats-Msg-Id`, so JetStream stores it at most
    /// once; answers the stream sequence it is stored at, or `None` when
    /// another append took its place (then it is not stored). Asks for up to
    /// [`SETTLE_FOR`]; past that the outcome is unknown, and said so.
    async fn settle(
        &self,
        thread: &ThreadId,
        at: Position,
        events: &[Arc<StoredEvent>],
        headers: HeaderMap,
        payload: Bytes,
        lost: impl std::fmt::Display,
    ) -> Result<Option<u64>, BackboneError> {
        let deadline = tokio::time::Instant::now() + SETTLE_FOR;
        let mut pause = Duration::from_millis(100);
        let mut last_error = lost.to_string();
        while tokio::time::Instant::now() < deadline {
            let sent = self.js.publish_with_headers(self.subject(thread), headers.clone(), payload.clone()).await;
            match sent.map_err(|e| e.to_string()) {
                Ok(ack) => match ack.await {
                    // Stored now, or found stored already (a duplicate of the first send).
                    Ok(ack) => return Ok(Some(ack.sequence)),
                    Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => {
                        // The thread moved on: by this append, or by another.
                        let stored = crate::stored_as_sent(self, thread, at, events).await?;
                        return Ok(stored.map(|at| at.token));
                    }
                    Err(e) => last_error = e.to_string(),
                },
                Err(e) => last_error = e,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        Err(BackboneError::Unavailable(format!(
            "nats: {last_error}; whether the events were stored is unknown: publish them again with the same event_id"
        )))
    }

    fn subject(&self, thread: &ThreadId) -> String {
        format!("{}.ev.{thread}", self.prefix)
    }

    /// Fails at once while disconnected, rather than after a request timeout.
    fn connected(&self) -> Result<(), BackboneError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(BackboneError::Unavailable(format!("nats: {state}"))),
        }
    }

    fn learn(&self, thread: &ThreadId, last_seq: u64, stream_seq: u64) {
        learn(&mut self.index.lock(), thread, last_seq, stream_seq);
    }

    /// Where to start reading for events after `after`: the message holding
    /// `after.seq` when known, else the first message after the nearest known one.
    fn start_for(&self, thread: &ThreadId, after: Position) -> u64 {
        if after.token > 0 {
            return after.token;
        }
        let index = self.index.lock();
        index
            .get(thread)
            .and_then(|map| map.range(..=after.seq).next_back())
            .map_or(1, |(_, &stream_seq)| stream_seq + 1)
    }

    async fn next_message(&self, subject: &str, from: u64) -> Result<Option<StreamMessage>, BackboneError> {
        let got = self.stream.raw_message_builder().sequence(from).next_by_subject(subject).send().await;
        match got {
            Ok(message) => Ok(Some(message)),
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn thread_record(&self, thread: &ThreadId) -> Result<Option<ThreadRecord>, BackboneError> {
        let value = self.threads.get(thread.as_str()).await.map_err(unavailable)?;
        value.as_deref().map(decode).transpose()
    }

    async fn keys(store: &kv::Store) -> Result<Vec<String>, BackboneError> {
        let mut keys = store.keys().await.map_err(unavailable)?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            out.push(key.map_err(unavailable)?);
        }
        Ok(out)
    }

    async fn follow_once(
        &self,
        follower: &dyn Follower,
        resume: &mut Option<u64>,
        stop: &CancellationToken,
    ) -> Result<(), BackboneError> {
        let deliver_policy = match *resume {
            Some(next) => DeliverPolicy::ByStartSequence { start_sequence: next },
            None => DeliverPolicy::New,
        };
        let config =
            OrderedConfig { filter_subject: format!("{}.ev.>", self.prefix), deliver_policy, ..Default::default() };
        let consumer = self.stream.create_consumer(config).await.map_err(unavailable)?;
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(unavailable(e)),
                None => return Err(BackboneError::Unavailable("nats: the feed consumer ended".into())),
            };
            let stream_seq = message.info().map_err(unavailable)?.stream_sequence;
            *resume = Some(stream_seq + 1);
            match decode_events(&message.payload) {
                Ok(events) if !events.is_empty() => {
                    if let Some(last) = events.last() {
                        self.learn(last.thread_id(), last.seq(), stream_seq);
                        follower.appended(&events, Position { seq: last.seq(), token: stream_seq });
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(stream_seq, error = %e, "feed message with unreadable events"),
            }
        }
    }
}

#[async_trait]
impl Backbone for NatsBackbone {
    async fn ping(&self) -> Result<(), BackboneError> {
        self.connected()?;
        // A JetStream request, not just the connection: NATS may be up with JetStream unavailable.
        self.stream.get_info().await.map(drop).map_err(unavailable)
    }

    async fn durability(&self) -> Result<Vec<String>, BackboneError> {
        self.connected()?;
        let mut streams = vec![self.stream.clone()];
        for bucket in ["threads", "runs", "running"] {
            let name = format!("KV_{}_{bucket}", self.prefix);
            streams.push(self.js.get_stream(&name).await.map_err(unavailable)?);
        }
        let mut gaps = Vec::new();
        for mut stream in streams {
            let config = stream.info().await.map_err(unavailable)?.config.clone();
            gaps.extend(durability_gap(&config.name, config.storage, config.num_replicas));
        }
        Ok(gaps)
    }

    async fn create_thread(&self, thread: &ThreadId, meta: &ThreadMeta) -> Result<bool, BackboneError> {
        self.connected()?;
        let record =
            ThreadRecord { owner: meta.owner.clone(), oldest_seq: 1, by_publisher: meta.by_publisher, runs: None };
        match self.threads.create(thread.as_str(), to_json(&record)?).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), CreateErrorKind::AlreadyExists) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn thread(&self, thread: &ThreadId) -> Result<Option<ThreadMeta>, BackboneError> {
        self.connected()?;
        Ok(self.thread_record(thread).await?.map(|r| ThreadMeta { owner: r.owner, by_publisher: r.by_publisher }))
    }

    async fn threads(&self) -> Result<Vec<ThreadId>, BackboneError> {
        self.connected()?;
        Ok(Self::keys(&self.threads).await?.iter().filter_map(|k| ThreadId::parse(k).ok()).collect())
    }

    async fn thread_count(&self) -> Result<u64, BackboneError> {
        self.connected()?;
        // One message per thread in the bucket's stream: it keeps no history.
        // (The client's `status()` answers figures cached when the bucket was opened.)
        let name = format!("KV_{}_threads", self.prefix);
        let info =
            self.js.get_stream_no_info(name).await.map_err(unavailable)?.get_info().await.map_err(unavailable)?;
        Ok(info.state.messages)
    }

    async fn register_run(
        &self,
        run: &RunId,
        entry: &RunEntry,
        running: Option<&Running>,
    ) -> Result<bool, BackboneError> {
        self.connected()?;
        let key = key_safe(run.as_str());
        // Two buckets, two writes: the running entry goes first, so a node that
        // dies between them leaves a running entry with no registration, which
        // the idle watchdog ends (its run is not found, so the entry is dropped).
        // The other way round would leave a registered run nobody ever expires.
        if let Some(running) = running {
            match self.running.create(&key, to_json(running)?).await {
                Ok(_) => {}
                // A running entry for this id: the id is in use (or being healed).
                Err(e) if matches!(e.kind(), CreateErrorKind::AlreadyExists) => return Ok(false),
                Err(e) => return Err(unavailable(e)),
            }
        }
        match self.runs.create(&key, to_json(entry)?).await {
            Ok(_) => Ok(true),
            Err(e) => {
                if running.is_some() {
                    // Undo the running entry; if this fails too, the watchdog heals it.
                    if let Err(undo) = self.set_running(run, None).await {
                        tracing::warn!(run = %run, error = %undo, "could not undo a running entry; the watchdog will");
                    }
                }
                match e.kind() {
                    CreateErrorKind::AlreadyExists => Ok(false),
                    _ => Err(unavailable(e)),
                }
            }
        }
    }

    async fn remove_runs(&self, runs: &[RunId]) -> Result<(), BackboneError> {
        self.connected()?;
        // Purged, not deleted: a delete marker would stay for ever too.
        for run in runs {
            let subject = format!("$KV.{}_runs.{}", self.prefix, key_safe(run.as_str()));
            self.runs_stream.purge().filter(subject).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn run(&self, run: &str) -> Result<Option<RunEntry>, BackboneError> {
        self.connected()?;
        let value = self.runs.get(key_safe(run)).await.map_err(unavailable)?;
        value.as_deref().map(decode).transpose()
    }

    async fn append(
        &self,
        thread: &ThreadId,
        at: Position,
        events: &[Arc<StoredEvent>],
        change: &RunningChange,
    ) -> Result<Outcome, BackboneError> {
        self.connected()?;
        let Some(last) = events.last() else { return Ok(Outcome::Appended(at)) };
        let mut payload = Vec::with_capacity(events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 2);
        payload.push(b'[');
        for (i, event) in events.iter().enumerate() {
            if i > 0 {
                payload.push(b',');
            }
            payload.extend_from_slice(event.json.as_bytes());
        }
        payload.push(b']');
        // JetStream refuses a message over the server's max_payload, every time:
        // say so (413) rather than let the publisher retry a 503 for ever.
        let max = self.client.server_info().max_payload;
        if payload.len() + HEADER_ALLOWANCE > max {
            let why =
                format!("{} bytes of events in one append; this NATS takes at most {max} per message", payload.len());
            return Err(BackboneError::TooLarge(why));
        }
        let mut headers = HeaderMap::new();
        headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE, at.token.to_string().as_str());
        headers.insert(LAST_SEQ, last.seq().to_string().as_str());
        // Names this attempt: sent again with the same id, JetStream stores it at most once.
        headers.insert(MSG_ID, format!("{:016x}", rand::random::<u64>()).as_str());
        let payload = Bytes::from(payload);
        let ack = self
            .js
            .publish_with_headers(self.subject(thread), headers.clone(), payload.clone())
            .await
            .map_err(unavailable)?;
        let stream_seq = match ack.await {
            Ok(ack) => ack.sequence,
            Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => return Ok(Outcome::Moved),
            // No answer: it may or may not be stored. Find out before answering.
            Err(e) => match self.settle(thread, at, events, headers, payload, e).await? {
                Some(stream_seq) => stream_seq,
                None => return Ok(Outcome::Moved),
            },
        };
        self.learn(thread, last.seq(), stream_seq);
        // The events are stored: a failure below only leaves the running set stale,
        // which the watchdog and the lost-worker sweep repair.
        let changed = match change {
            RunningChange::Keep => Ok(()),
            RunningChange::Set(run, running) => self.set_running(run, Some(running)).await,
            RunningChange::Remove(run) => self.set_running(run, None).await,
        };
        if let Err(e) = changed {
            tracing::warn!(thread = %thread, error = %e, "events stored, but the running set was not updated");
        }
        Ok(Outcome::Appended(Position { seq: last.seq(), token: stream_seq }))
    }

    async fn read(&self, thread: &ThreadId, after: Position, limit: usize) -> Result<Tail, BackboneError> {
        self.connected()?;
        let subject = self.subject(thread);
        let mut from = self.start_for(thread, after);
        let mut tail = Tail { events: Vec::new(), at: after };
        while tail.events.len() < limit {
            let Some(message) = self.next_message(&subject, from).await? else { break };
            let events = decode_events(&message.payload)?;
            let last = last_seq(&message)?;
            self.learn(thread, last, message.sequence);
            for event in events.into_iter().filter(|e| e.seq() > after.seq) {
                if tail.events.len() == limit {
                    break;
                }
                tail.at = Position { seq: event.seq(), token: message.sequence };
                tail.events.push(event);
            }
            from = message.sequence + 1;
        }
        Ok(tail)
    }

    async fn extent(&self, thread: &ThreadId) -> Result<Option<Extent>, BackboneError> {
        self.connected()?;
        let subject = self.subject(thread);
        let (record, last) =
            tokio::join!(self.thread_record(thread), self.stream.get_last_raw_message_by_subject(&subject));
        let Some(record) = record? else { return Ok(None) };
        let head = match last {
            Ok(message) => Position { seq: last_seq(&message)?, token: message.sequence },
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Position::default(),
            Err(e) => return Err(unavailable(e)),
        };
        Ok(Some(Extent { oldest_seq: record.oldest_seq, head }))
    }

    async fn oldest_threads(&self, at_or_before_ms: i64, limit: usize) -> Result<Vec<ThreadId>, BackboneError> {
        self.connected()?;
        // The stream holds every thread's messages in append order, and
        // retention removes each thread's oldest: its first messages are the
        // oldest retained events of the deployment. Walk from there.
        let all = format!("{}.ev.>", self.prefix);
        let mut from = self.stream.get_info().await.map_err(unavailable)?.state.first_sequence.max(1);
        let mut found: Vec<ThreadId> = Vec::new();
        // Per thread met: the last `seq` retention has removed (a message may
        // hold removed events beside kept ones, and is kept whole).
        let mut removed_through: HashMap<ThreadId, u64> = HashMap::new();
        // A thread with a long old history is removed a part at a time.
        let mut walked = 0;
        while found.len() < limit && walked < OLDEST_WALK {
            walked += 1;
            let Some(message) = self.next_message(&all, from).await? else { break };
            from = message.sequence + 1;
            let events = decode_events(&message.payload)?;
            let Some(thread) = events.first().map(|e| e.thread_id().clone()) else { continue };
            if found.contains(&thread) {
                continue;
            }
            let through = match removed_through.get(&thread) {
                Some(&through) => through,
                None => {
                    let record = self.thread_record(&thread).await?;
                    let through = record.map_or(0, |r| {
                        r.oldest_seq.saturating_sub(1).max(r.runs.map_or(0, |runs| runs.removed_through()))
                    });
                    removed_through.insert(thread.clone(), through);
                    through
                }
            };
            let Some(first_kept) = events.iter().find(|e| e.seq() > through) else { continue };
            if first_kept.ts().millis() > at_or_before_ms {
                break;
            }
            found.push(thread);
        }
        Ok(found)
    }

    async fn event_count(&self) -> Result<u64, BackboneError> {
        self.connected()?;
        // JetStream counts messages, not the events in them: the stream's own
        // count stands in (at most the events it holds, plus a marker per
        // thread retention emptied), so the limit never adds threads up.
        Ok(self.stream.get_info().await.map_err(unavailable)?.state.messages)
    }

    async fn trimmed_runs(&self, thread: &ThreadId) -> Result<Option<TrimmedRuns>, BackboneError> {
        self.connected()?;
        Ok(self.thread_record(thread).await?.and_then(|r| r.runs))
    }

    async fn trim(
        &self,
        thread: &ThreadId,
        keep_from: u64,
        kept: &TrimmedRuns,
        expected: RunsMark,
        // The stream is in append order already: it needs no index by age.
        _first_kept_ms: Option<i64>,
    ) -> Result<bool, BackboneError> {
        self.connected()?;
        // The runs' state first, as a compare-and-set on the record's revision.
        let Some(entry) = self.threads.entry(thread.as_str()).await.map_err(unavailable)? else { return Ok(false) };
        let mut record: ThreadRecord = decode(&entry.value)?;
        if record.runs.as_ref().map(TrimmedRuns::mark).unwrap_or_default() != expected {
            return Ok(false);
        }
        record.runs = Some(kept.clone());
        match self.threads.update(thread.as_str(), to_json(&record)?, entry.revision).await {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) => return Ok(false),
            Err(e) => return Err(unavailable(e)),
        }
        self.remove_before(thread, keep_from).await?;
        Ok(true)
    }

    async fn set_running(&self, run: &RunId, running: Option<&Running>) -> Result<(), BackboneError> {
        self.connected()?;
        let key = key_safe(run.as_str());
        match running {
            Some(r) => self.running.put(key, to_json(r)?).await.map(drop).map_err(unavailable),
            None => {
                let subject = format!("$KV.{}_running.{key}", self.prefix);
                self.running_stream.purge().filter(subject).await.map(drop).map_err(unavailable)
            }
        }
    }

    async fn running(&self) -> Result<Vec<(RunId, Running)>, BackboneError> {
        self.connected()?;
        let mut out = Vec::new();
        for key in Self::keys(&self.running).await? {
            let Some(run) = from_key_safe(&key).and_then(|r| RunId::parse(&r).ok()) else { continue };
            if let Some(value) = self.running.get(&key).await.map_err(unavailable)? {
                out.push((run, decode(&value)?));
            }
        }
        Ok(out)
    }

    async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<(), BackboneError> {
        self.connected()?;
        // The TTL only: when it was written is the server's time stamp on the entry.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.nodes.put(key_safe(node), Bytes::from(ttl_ms.to_string())).await.map(drop).map_err(unavailable)
    }

    async fn live_nodes(&self) -> Result<HashSet<String>, BackboneError> {
        self.connected()?;
        let mut beats = Vec::new();
        for key in Self::keys(&self.nodes).await? {
            let Some(entry) = self.nodes.entry(&key).await.map_err(unavailable)? else { continue };
            let ttl_ms = std::str::from_utf8(&entry.value).ok().and_then(|s| s.parse::<u64>().ok());
            let written_ms = i64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
            if let (Some(node), Some(ttl_ms)) = (from_key_safe(&key), ttl_ms) {
                beats.push(Heartbeat { node, written_ms, ttl_ms });
            }
        }
        Ok(live_by_server_time(&beats))
    }

    async fn follow(&self, follower: Arc<dyn Follower>, stop: CancellationToken) {
        let mut resume = None;
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            if let Err(e) = self.follow_once(&*follower, &mut resume, &stop).await {
                tracing::warn!(error = %e, "nats feed: interrupted; resuming");
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            } else {
                backoff = Duration::from_millis(100);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_live_while_its_last_heartbeat_plus_ttl_reaches_the_newest_one() {
        let beat = |node: &str, written_ms, ttl_ms| Heartbeat { node: node.into(), written_ms, ttl_ms };
        let live = live_by_server_time(&[beat("me", 10_000, 2_000), beat("b", 8_500, 2_000), beat("c", 7_000, 2_000)]);
        assert_eq!(live, HashSet::from(["me".to_owned(), "b".to_owned()]));
        // Times are all the server's: a node whose own clock is hours off is judged the same.
        assert!(live_by_server_time(&[]).is_empty());
    }

    #[test]
    fn the_read_index_is_bounded_by_entries_whatever_the_number_of_threads() {
        let mut index = IndexCache::with_weighter(64, 1_000, IndexWeight);
        for t in 0..2_000u64 {
            let thread = ThreadId::parse(&format!("thread_{t}")).unwrap();
            for seq in 1..=3 {
                learn(&mut index, &thread, seq, t * 10 + seq);
            }
        }
        assert!(index.weight() <= 1_000, "{}", index.weight());
        assert!(index.len() >= 100, "recent threads stay: {}", index.len());
        let recent = ThreadId::parse("thread_1999").unwrap();
        assert_eq!(index.get(&recent).map(BTreeMap::len), Some(3));
    }

    #[test]
    fn only_a_file_stream_with_three_replicas_or_more_passes() {
        assert_eq!(durability_gap("s", StorageType::File, 3), None);
        assert_eq!(durability_gap("s", StorageType::File, 5), None);
        assert!(durability_gap("s", StorageType::File, 1).is_some_and(|g| g.contains("1 replica")));
        assert!(durability_gap("s", StorageType::Memory, 3).is_some_and(|g| g.contains("memory")));
    }
}
