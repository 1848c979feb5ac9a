//! The backbone on Redis Streams.
//!
//! Keys, all under the deployment's prefix `P`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:thread:{thread}` | hash | `owner`, `head` (last `seq`), `oldest` (oldest retained `seq`), `pub` (1: created by a publisher), `runs` and `runs_through` (the runs' state as retention left it, see [`TrimmedRuns`]) |
//! | `P:events:{thread}` | stream | one entry per event, id `{seq}-0`, field `e` = the envelope |
//! | `P:threads` | set | every thread id (the upgrade that builds `P:ages` reads it once) |
//! | `P:ages` | sorted set | thread → the append time (ms) of its oldest retained event: what the age and whole-log retention limits take from |
//! | `P:events` | string | events retained in all threads |
//! | `P:indexed` | string | set once `P:ages` and `P:events` cover threads stored before they existed |
//! | `P:run:{run}` | string | the run's registration (JSON); removed once retention removed all its events and its de-duplication window passed |
//! | `P:running` | hash | run → running entry (JSON) |
//! | `P:nodes` | sorted set | node → the time (Redis's clock, ms) its heartbeat expires; live nodes are one range read, never a keyspace scan |
//! | `P:feed` | stream | one entry per append: `t` = thread, `e` = its events (JSON array), capped with `MAXLEN ~`; or `t` and `rewound`: that thread's head moved back (a failover lost acknowledged writes) |
//!
//! One stream per thread keeps reads of a thread's history a single `XRANGE`
//! by `seq` (the entry id *is* the `seq`), and retention a single `XTRIM MINID`.
//! An append is one Lua script, so the head check, the events, the head bump,
//! the feed entry and the running entry change happen atomically: there is no
//! moment at which a thread's events are stored but not announced, or the
//! other way round. Nodes follow the one feed stream with a blocking `XREAD`:
//! one read per node, whatever its number of subscribers. The feed is capped;
//! a node that falls so far behind that entries it had not read were trimmed
//! notices (the feed's first entry is past its cursor) and catches its watched
//! threads up from their own streams.
//!
//! The script touches `P:feed` besides the thread's keys, so this layout wants
//! one Redis primary (with replicas or not), not Redis Cluster. Durability is
//! Redis's: a `200` survives a crash of Redis or its machine only with
//! `appendonly yes` and `appendfsync always`, and a failover only if the
//! replicas had it. [`durability_gaps`] says what the settings leave open; a
//! node refuses to start on them unless told to accept them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agentwire_log::StoredEvent;
use agentwire_protocol::{RunId, ThreadId, UserId};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Script};
use tokio_util::sync::CancellationToken;

use crate::{
    Backbone, BackboneError, Extent, Follower, Outcome, Position, RunEntry, Running, RunningChange, RunsMark,
    SETTLE_FOR, Tail, ThreadMeta, TrimmedRuns, decode, decode_events, encode,
};

/// Feed entries kept for nodes that fall behind (roughly: Redis trims lazily).
pub const FEED_MAXLEN: usize = 100_000;
/// Most feed entries taken in one read.
const FEED_BATCH: usize = 512;
/// How long one blocking feed read waits before looking at `stop` again.
const FEED_BLOCK: Duration = Duration::from_millis(1000);
/// A command that gets no answer in this long fails (`503`), rather than hanging a publisher.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// KEYS: thread hash, thread stream, feed, running hash, ages, event count,
/// this attempt's fence. ARGV: expected head, thread id, feed maxlen, running
/// op (`set`/`del`/``), run id, running entry, the append time (ms), then one
/// envelope per event. Answers the new head, or -1 (no such thread), -2 (the
/// head moved) or -3 (the attempt was fenced off: see [`FENCE`]).
const APPEND: &str = r#"
if redis.call('EXISTS', KEYS[7]) == 1 then return -3 end
local head = redis.call('HGET', KEYS[1], 'head')
if not head then return -1 end
head = tonumber(head)
if head ~= tonumber(ARGV[1]) then return -2 end
local events = {}
for i = 8, #ARGV do
  head = head + 1
  redis.call('XADD', KEYS[2], head .. '-0', 'e', ARGV[i])
  events[#events + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], 'head', head)
redis.call('ZADD', KEYS[5], 'NX', ARGV[7], ARGV[2])
redis.call('INCRBY', KEYS[6], #events)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 't', ARGV[2], 'e', '[' .. table.concat(events, ',') .. ']')
if ARGV[4] == 'set' then
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
elseif ARGV[4] == 'del' then
  redis.call('HDEL', KEYS[4], ARGV[5])
end
return head
"#;

/// Settles an append whose answer was lost. KEYS: thread hash, the attempt's
/// fence. ARGV: the head the append expected. If the thread is still there,
/// the append never ran, and the fence makes sure it never will (Redis may
/// still run a command sent before a timeout, once it reads it): answers 0.
/// Otherwise answers 1: the head moved, by this append or another.
const FENCE: &str = r#"
if tonumber(redis.call('HGET', KEYS[1], 'head') or '-1') == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], 1, 'EX', 3600)
  return 0
end
return 1
"#;

/// KEYS: run key, running hash. ARGV: run id, registration, running entry.
const REGISTER: &str = r#"
if redis.call('SET', KEYS[1], ARGV[2], 'NX') then
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
  return 1
end
return 0
"#;

/// KEYS: thread hash, thread stream, ages, event count. ARGV: keep from, the
/// runs' state JSON, the `runs_through` expected, the thread id, the append
/// time of the first event kept (`` if none is), the `runs_removed` expected,
/// the new `runs_through` and `runs_removed`. Answers 1, or 0 when another
/// node wrote the record first. A `keep from` at or before the oldest event
/// removes nothing: a checkpoint.
const TRIM: &str = r#"
local through = tonumber(redis.call('HGET', KEYS[1], 'runs_through') or '0')
local removed = tonumber(redis.call('HGET', KEYS[1], 'runs_removed') or through)
if through ~= tonumber(ARGV[3]) or removed ~= tonumber(ARGV[6]) then return 0 end
local keep = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'runs', ARGV[2], 'runs_through', ARGV[7], 'runs_removed', ARGV[8])
local oldest = tonumber(redis.call('HGET', KEYS[1], 'oldest') or '1')
if keep > oldest then
  local removed = redis.call('XTRIM', KEYS[2], 'MINID', keep .. '-0')
  redis.call('DECRBY', KEYS[4], removed)
  redis.call('HSET', KEYS[1], 'oldest', keep)
  if ARGV[5] == '' then
    redis.call('ZREM', KEYS[3], ARGV[4])
  else
    redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
  end
end
return 1
"#;

/// KEYS: thread hash, threads set. ARGV: thread id, owner, by publisher (1/0).
const CREATE_THREAD: &str = r#"
if redis.call('HSETNX', KEYS[1], 'owner', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], 'head', 0, 'oldest', 1, 'pub', ARGV[3])
  redis.call('SADD', KEYS[2], ARGV[1])
  return 1
end
return 0
"#;

/// KEYS: nodes sorted set. ARGV: node, TTL in ms. On Redis's own clock, so
/// nodes with skewed clocks still agree on who is alive.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"#;

/// KEYS: nodes sorted set. Drops the expired, answers the live.
const LIVE_NODES: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"#;

/// The settings of a Redis that decide whether an acknowledged write survives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisDurability {
    pub appendonly: String,
    pub appendfsync: String,
    /// Replicas connected to the primary now (a failover may promote one).
    pub connected_replicas: u64,
    pub min_replicas_to_write: u64,
}

/// What `settings` leave open for an acknowledged event to be lost (empty: nothing).
pub fn durability_gaps(settings: &RedisDurability) -> Vec<String> {
    let mut gaps = Vec::new();
    if settings.appendonly != "yes" {
        gaps.push(format!(
            "redis appendonly is {:?}: a Redis restart loses what was appended since its last snapshot",
            settings.appendonly
        ));
    } else if settings.appendfsync != "always" {
        gaps.push(format!(
            "redis appendfsync is {:?}: a crash of Redis's machine loses what was acknowledged but not yet on disk",
            settings.appendfsync
        ));
    }
    if settings.connected_replicas > 0 && settings.min_replicas_to_write == 0 {
        gaps.push(format!(
            "redis has {} replica(s) and min-replicas-to-write 0: a failover can promote a replica that never \
             received acknowledged events",
            settings.connected_replicas
        ));
    }
    gaps
}

/// The Redis Streams backbone. See the module docs.
pub struct RedisBackbone {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    append: Script,
    register: Script,
    create_thread: Script,
    heartbeat: Script,
    live_nodes: Script,
    trim: Script,
    fence: Script,
    /// Feed entries kept ([`FEED_MAXLEN`] unless a test asks for fewer).
    feed_cap: usize,
}

fn unavailable(e: redis::RedisError) -> BackboneError {
    BackboneError::Unavailable(format!("redis: {e}"))
}

fn corrupt(what: impl std::fmt::Display) -> BackboneError {
    BackboneError::Corrupt(format!("redis: {what}"))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, BackboneError> {
    String::from_utf8(encode(value)?).map_err(corrupt)
}

fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, BackboneError> {
    decode(json.as_bytes())
}

/// The envelope stored in a stream entry's `e` field.
fn entry_event(entry: &redis::streams::StreamId) -> Result<Arc<StoredEvent>, BackboneError> {
    let json: String = entry.get("e").ok_or_else(|| corrupt(format!("entry {} has no event", entry.id)))?;
    StoredEvent::from_json(json).map(Arc::new).map_err(corrupt)
}

/// A stream entry id (`{ms}-{n}`) as a pair that orders like Redis orders them.
fn stream_id(id: &str) -> (u64, u64) {
    let mut parts = id.split('-').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The `seq` a stream entry id (`{seq}-0`) stands for.
fn entry_seq(id: &str) -> Result<u64, BackboneError> {
    id.split('-').next().and_then(|s| s.parse().ok()).ok_or_else(|| corrupt(format!("entry id {id}")))
}

impl RedisBackbone {
    /// Connects to `url` (`redis://host:port/db`) for the deployment `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, BackboneError> {
        let client =
            redis::Client::open(url).map_err(|e| BackboneError::Config(format!("redis address {url}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client.get_connection_manager_with_config(config).await.map_err(unavailable)?;
        let backbone = Self {
            client,
            conn,
            prefix: prefix.to_owned(),
            append: Script::new(APPEND),
            register: Script::new(REGISTER),
            create_thread: Script::new(CREATE_THREAD),
            heartbeat: Script::new(HEARTBEAT),
            live_nodes: Script::new(LIVE_NODES),
            trim: Script::new(TRIM),
            fence: Script::new(FENCE),
            feed_cap: FEED_MAXLEN,
        };
        backbone.ensure_indexed().await?;
        Ok(backbone)
    }

    /// Fills `P:ages` and `P:events` in for threads stored before they existed:
    /// one walk over the threads, once per deployment (`P:indexed` says it is
    /// done; a node that finds another building it goes on without waiting).
    /// An append to a thread already walked while the walk runs is not counted,
    /// which only leaves the whole-log limit that much lenient.
    async fn ensure_indexed(&self) -> Result<(), BackboneError> {
        let mut conn = self.conn();
        let done: bool = conn.exists(self.key("indexed")).await.map_err(unavailable)?;
        if done {
            return Ok(());
        }
        let claimed: Option<String> = redis::cmd("SET")
            .arg(self.key("indexing"))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(600)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if claimed.is_none() {
            return Ok(());
        }
        let mut total = 0u64;
        for thread in self.threads().await? {
            let Some(extent) = self.extent(&thread).await? else { continue };
            if extent.head.seq < extent.oldest_seq {
                continue;
            }
            total += extent.head.seq + 1 - extent.oldest_seq;
            let before_oldest = Position { seq: extent.oldest_seq - 1, token: 0 };
            if let Some(first) = self.read(&thread, before_oldest, 1).await?.events.first() {
                let () = redis::cmd("ZADD")
                    .arg(self.key("ages"))
                    .arg("NX")
                    .arg(first.ts().millis())
                    .arg(thread.as_str())
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
            }
        }
        let mut pipe = redis::pipe();
        pipe.atomic().set(self.key("events"), total).ignore().set(self.key("indexed"), 1).ignore();
        let () = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }

    /// Keeps about `cap` feed entries instead of [`FEED_MAXLEN`] (tests of a
    /// node that falls behind the feed).
    pub fn with_feed_cap(mut self, cap: usize) -> Self {
        self.feed_cap = cap.max(1);
        self
    }

    fn thread_key(&self, thread: &ThreadId) -> String {
        format!("{}:thread:{thread}", self.prefix)
    }

    fn events_key(&self, thread: &ThreadId) -> String {
        format!("{}:events:{thread}", self.prefix)
    }

    fn run_key(&self, run: &str) -> String {
        format!("{}:run:{run}", self.prefix)
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// What became of an append whose answer was lost (`lost`): fenced off
    /// before it ran (nothing stored: `Unavailable`), stored (its events are
    /// where it put them), or overtaken by another append (`Moved`). Asks
    /// until Redis answers, for up to [`SETTLE_FOR`]; past that the outcome is
    /// unknown, and said so.
    async fn settle(
        &self,
        thread: &ThreadId,
        at: Position,
        events: &[Arc<StoredEvent>],
        fence: &str,
        lost: redis::RedisError,
    ) -> Result<Outcome, BackboneError> {
        let deadline = tokio::time::Instant::now() + SETTLE_FOR;
        let mut pause = Duration::from_millis(100);
        loop {
            let fenced: Result<i64, _> =
                self.fence.key(self.thread_key(thread)).key(fence).arg(at.seq).invoke_async(&mut self.conn()).await;
            match fenced {
                Ok(0) => return Err(BackboneError::Unavailable(format!("redis: {lost}; nothing was stored"))),
                Ok(_) => {
                    let stored = crate::stored_as_sent(self, thread, at, events).await?;
                    return Ok(stored.map_or(Outcome::Moved, Outcome::Appended));
                }
                Err(e) if tokio::time::Instant::now() + pause > deadline => {
                    return Err(BackboneError::Unavailable(format!(
                        "redis: {e}; whether the events were stored is unknown: publish them again with the same event_id"
                    )));
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// One setting, by `CONFIG GET` (one name per call: Redis before 7 takes one).
    async fn config_value(&self, name: &str) -> Result<String, BackboneError> {
        let reply: HashMap<String, String> =
            redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut self.conn()).await.map_err(unavailable)?;
        Ok(reply.get(name).cloned().unwrap_or_default())
    }

    /// The id of the feed's newest entry (`0-0` when empty): where following starts.
    async fn feed_end(&self, conn: &mut redis::aio::MultiplexedConnection) -> Result<String, BackboneError> {
        let reply: StreamRangeReply = conn.xrevrange_count(self.key("feed"), "+", "-", 1).await.map_err(unavailable)?;
        Ok(reply.ids.into_iter().next().map_or_else(|| "0-0".to_owned(), |e| e.id))
    }

    /// Whether the feed's oldest entry is newer than `last`: entries after
    /// `last` may have been trimmed before this node read them.
    async fn feed_trimmed_past(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        last: &str,
    ) -> Result<bool, BackboneError> {
        let reply: StreamRangeReply = conn.xrange_count(self.key("feed"), "-", "+", 1).await.map_err(unavailable)?;
        let Some(first) = reply.ids.first() else { return Ok(false) };
        Ok(stream_id(&first.id) > stream_id(last))
    }

    /// One blocking read of the feed after `last`; answers the new `last`.
    async fn read_feed(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        last: &str,
        follower: &dyn Follower,
    ) -> Result<Option<String>, BackboneError> {
        let options = StreamReadOptions::default()
            .count(FEED_BATCH)
            .block(usize::try_from(FEED_BLOCK.as_millis()).unwrap_or(1000));
        let reply: Option<StreamReadReply> =
            conn.xread_options(&[self.key("feed")], &[last], &options).await.map_err(unavailable)?;
        let Some(reply) = reply else { return Ok(None) };
        let entries: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        // Trimming keeps at least `feed_cap` entries, all newer than anything it
        // removed: if it removed entries after `last`, this read is full (or holds
        // the whole cap). Only then is the feed's start worth a look.
        if entries.len() >= FEED_BATCH.min(self.feed_cap) && self.feed_trimmed_past(conn, last).await? {
            follower.lost();
        }
        let mut newest = None;
        for entry in entries {
            if entry.contains_key("rewound") {
                let thread: Option<String> = entry.get("t");
                if let Some(thread) = thread.as_deref().and_then(|t| ThreadId::parse(t).ok()) {
                    follower.rewound(&thread);
                }
                newest = Some(entry.id);
                continue;
            }
            let events: Option<String> = entry.get("e");
            match events.as_deref().map(|json| decode_events(json.as_bytes())) {
                Some(Ok(events)) if !events.is_empty() => {
                    let seq = events.last().map_or(0, |e| e.seq());
                    follower.appended(&events, Position { seq, token: seq });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(id = %entry.id, error = %e, "feed entry with unreadable events"),
                None => tracing::warn!(id = %entry.id, "feed entry without events"),
            }
            newest = Some(entry.id);
        }
        Ok(newest)
    }
}

#[async_trait]
impl Backbone for RedisBackbone {
    async fn ping(&self) -> Result<(), BackboneError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await.map_err(unavailable)?;
        Ok(())
    }

    async fn durability(&self) -> Result<Vec<String>, BackboneError> {
        let info: String =
            redis::cmd("INFO").arg("replication").query_async(&mut self.conn()).await.map_err(unavailable)?;
        let connected_replicas = info
            .lines()
            .find_map(|line| line.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        let read = async {
            Ok::<_, BackboneError>(RedisDurability {
                appendonly: self.config_value("appendonly").await?,
                appendfsync: self.config_value("appendfsync").await?,
                connected_replicas,
                min_replicas_to_write: self.config_value("min-replicas-to-write").await?.parse().unwrap_or(0),
            })
        };
        match read.await {
            Ok(settings) => Ok(durability_gaps(&settings)),
            // Managed Redis often renames CONFIG away: unknown is not durable.
            Err(e) => {
                Ok(vec![format!("cannot read redis settings ({e}): whether an acknowledged event survives is unknown")])
            }
        }
    }

    async fn create_thread(&self, thread: &ThreadId, meta: &ThreadMeta) -> Result<bool, BackboneError> {
        let created: i64 = self
            .create_thread
            .key(self.thread_key(thread))
            .key(self.key("threads"))
            .arg(thread.as_str())
            .arg(meta.owner.as_str())
            .arg(u8::from(meta.by_publisher))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(created == 1)
    }

    async fn thread(&self, thread: &ThreadId) -> Result<Option<ThreadMeta>, BackboneError> {
        let (owner, by_publisher): (Option<String>, Option<u8>) =
            self.conn().hmget(self.thread_key(thread), &["owner", "pub"]).await.map_err(unavailable)?;
        let meta = |owner| ThreadMeta { owner, by_publisher: by_publisher == Some(1) };
        owner.map(|o| UserId::parse(&o).map(meta).map_err(corrupt)).transpose()
    }

    async fn threads(&self) -> Result<Vec<ThreadId>, BackboneError> {
        let ids: Vec<String> = self.conn().smembers(self.key("threads")).await.map_err(unavailable)?;
        Ok(ids.iter().filter_map(|id| ThreadId::parse(id).ok()).collect())
    }

    async fn thread_count(&self) -> Result<u64, BackboneError> {
        self.conn().scard(self.key("threads")).await.map_err(unavailable)
    }

    async fn register_run(
        &self,
        run: &RunId,
        entry: &RunEntry,
        running: Option<&Running>,
    ) -> Result<bool, BackboneError> {
        let running = running.map(to_json).transpose()?.unwrap_or_default();
        let registered: i64 = self
            .register
            .key(self.run_key(run.as_str()))
            .key(self.key("running"))
            .arg(run.as_str())
            .arg(to_json(entry)?)
            .arg(running)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(registered == 1)
    }

    async fn remove_runs(&self, runs: &[RunId]) -> Result<(), BackboneError> {
        if runs.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = runs.iter().map(|run| self.run_key(run.as_str())).collect();
        let _: i64 = self.conn().del(keys).await.map_err(unavailable)?;
        Ok(())
    }

    async fn run(&self, run: &str) -> Result<Option<RunEntry>, BackboneError> {
        let json: Option<String> = self.conn().get(self.run_key(run)).await.map_err(unavailable)?;
        json.as_deref().map(from_json).transpose()
    }

    async fn append(
        &self,
        thread: &ThreadId,
        at: Position,
        events: &[Arc<StoredEvent>],
        change: &RunningChange,
    ) -> Result<Outcome, BackboneError> {
        let fence = self.key(&format!("fence:{:016x}", rand::random::<u64>()));
        let mut call = self.append.prepare_invoke();
        call.key(self.thread_key(thread))
            .key(self.events_key(thread))
            .key(self.key("feed"))
            .key(self.key("running"))
            .key(self.key("ages"))
            .key(self.key("events"))
            .key(&fence)
            .arg(at.seq)
            .arg(thread.as_str())
            .arg(self.feed_cap);
        match change {
            RunningChange::Keep => call.arg("").arg("").arg(""),
            RunningChange::Set(run, running) => call.arg("set").arg(run.as_str()).arg(to_json(running)?),
            RunningChange::Remove(run) => call.arg("del").arg(run.as_str()).arg(""),
        };
        call.arg(events.first().map_or(0, |e| e.ts().millis()));
        for event in events {
            call.arg(&*event.json);
        }
        let head: i64 = match call.invoke_async(&mut self.conn()).await {
            Ok(head) => head,
            // Refused as a whole (a script error, out of memory): nothing was stored.
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {
                return Err(unavailable(e));
            }
            // No answer: it may or may not have run. Find out before answering.
            Err(e) => return self.settle(thread, at, events, &fence, e).await,
        };
        match head {
            -2 | -3 => Ok(Outcome::Moved),
            -1 => Err(BackboneError::Corrupt(format!("thread {thread} has no record"))),
            head => {
                let seq = u64::try_from(head).map_err(corrupt)?;
                Ok(Outcome::Appended(Position { seq, token: seq }))
            }
        }
    }

    async fn read(&self, thread: &ThreadId, after: Position, limit: usize) -> Result<Tail, BackboneError> {
        if limit == 0 {
            return Ok(Tail { events: Vec::new(), at: after });
        }
        let start = format!("{}-0", after.seq + 1);
        let reply: StreamRangeReply =
            self.conn().xrange_count(self.events_key(thread), start, "+", limit).await.map_err(unavailable)?;
        let mut at = after;
        let mut events = Vec::with_capacity(reply.ids.len());
        for entry in &reply.ids {
            at.seq = entry_seq(&entry.id)?;
            events.push(entry_event(entry)?);
        }
        at.token = at.seq;
        Ok(Tail { events, at })
    }

    async fn extent(&self, thread: &ThreadId) -> Result<Option<Extent>, BackboneError> {
        let (head, oldest): (Option<u64>, Option<u64>) =
            self.conn().hmget(self.thread_key(thread), &["head", "oldest"]).await.map_err(unavailable)?;
        Ok(head.map(|seq| Extent { oldest_seq: oldest.unwrap_or(1), head: Position { seq, token: seq } }))
    }

    async fn trimmed_runs(&self, thread: &ThreadId) -> Result<Option<TrimmedRuns>, BackboneError> {
        let json: Option<String> = self.conn().hget(self.thread_key(thread), "runs").await.map_err(unavailable)?;
        json.as_deref().map(from_json).transpose()
    }

    async fn trim(
        &self,
        thread: &ThreadId,
        keep_from: u64,
        kept: &TrimmedRuns,
        expected: RunsMark,
        first_kept_ms: Option<i64>,
    ) -> Result<bool, BackboneError> {
        let done: i64 = self
            .trim
            .key(self.thread_key(thread))
            .key(self.events_key(thread))
            .key(self.key("ages"))
            .key(self.key("events"))
            .arg(keep_from)
            .arg(to_json(kept)?)
            .arg(expected.through_seq)
            .arg(thread.as_str())
            .arg(first_kept_ms.map(|ms| ms.to_string()).unwrap_or_default())
            .arg(expected.removed_through)
            .arg(kept.through_seq)
            .arg(kept.removed_through())
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(done == 1)
    }

    async fn oldest_threads(&self, at_or_before_ms: i64, limit: usize) -> Result<Vec<ThreadId>, BackboneError> {
        let ids: Vec<String> = self
            .conn()
            .zrangebyscore_limit(
                self.key("ages"),
                "-inf",
                at_or_before_ms,
                0,
                isize::try_from(limit).unwrap_or(isize::MAX),
            )
            .await
            .map_err(unavailable)?;
        Ok(ids.iter().filter_map(|id| ThreadId::parse(id).ok()).collect())
    }

    async fn event_count(&self) -> Result<u64, BackboneError> {
        let count: Option<i64> = self.conn().get(self.key("events")).await.map_err(unavailable)?;
        Ok(count.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    async fn set_running(&self, run: &RunId, running: Option<&Running>) -> Result<(), BackboneError> {
        let key = self.key("running");
        let () = match running {
            Some(r) => self.conn().hset(key, run.as_str(), to_json(r)?).await.map_err(unavailable)?,
            None => self.conn().hdel(key, run.as_str()).await.map_err(unavailable)?,
        };
        Ok(())
    }

    async fn running(&self) -> Result<Vec<(RunId, Running)>, BackboneError> {
        let all: Vec<(String, String)> = self.conn().hgetall(self.key("running")).await.map_err(unavailable)?;
        all.into_iter()
            .filter_map(|(run, json)| RunId::parse(&run).ok().map(|run| (run, json)))
            .map(|(run, json)| from_json(&json).map(|r| (run, r)))
            .collect()
    }

    async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<(), BackboneError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let _: i64 = self
            .heartbeat
            .key(self.key("nodes"))
            .arg(node)
            .arg(ttl_ms)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn live_nodes(&self) -> Result<HashSet<String>, BackboneError> {
        // One range read of a set as large as the nodes, whatever the keyspace holds.
        let live: Vec<String> =
            self.live_nodes.key(self.key("nodes")).invoke_async(&mut self.conn()).await.map_err(unavailable)?;
        Ok(live.into_iter().collect())
    }

    async fn announce_rewind(&self, thread: &ThreadId) -> Result<(), BackboneError> {
        let _: String = redis::cmd("XADD")
            .arg(self.key("feed"))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.feed_cap)
            .arg("*")
            .arg("t")
            .arg(thread.as_str())
            .arg("rewound")
            .arg(1)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn follow(&self, follower: Arc<dyn Follower>, stop: CancellationToken) {
        // Its own connection: a blocking XREAD would hold up every other command on a shared one.
        // The cursor outlives connections, so a reconnect resumes where the last one stopped.
        let mut cursor: Option<String> = None;
        // The blocking read must be allowed to wait out its block time.
        let feed_config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(FEED_BLOCK + RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT));
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                c = self.client.get_multiplexed_async_connection_with_config(&feed_config) => c,
            };
            let failure = match connected {
                Ok(mut conn) => loop {
                    let step = match cursor.as_deref() {
                        None => self.feed_end(&mut conn).await.map(Some),
                        Some(last) => tokio::select! {
                            _ = stop.cancelled() => return,
                            r = self.read_feed(&mut conn, last, &*follower) => r,
                        },
                    };
                    match step {
                        Ok(Some(newest)) => {
                            backoff = Duration::from_millis(100);
                            cursor = Some(newest);
                        }
                        Ok(None) => {}
                        Err(e) => break e,
                    }
                },
                Err(e) => unavailable(e),
            };
            tracing::warn!(error = %failure, "redis feed: connection lost; reconnecting");
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(appendonly: &str, appendfsync: &str, replicas: u64, min_replicas: u64) -> RedisDurability {
        RedisDurability {
            appendonly: appendonly.into(),
            appendfsync: appendfsync.into(),
            connected_replicas: replicas,
            min_replicas_to_write: min_replicas,
        }
    }

    #[test]
    fn only_an_fsynced_append_only_file_and_replicas_held_by_min_replicas_to_write_pass() {
        assert!(durability_gaps(&settings("yes", "always", 0, 0)).is_empty());
        assert!(durability_gaps(&settings("yes", "always", 2, 1)).is_empty());
        let gaps = |s| durability_gaps(&s).join("; ");
        assert!(gaps(settings("no", "everysec", 0, 0)).contains("appendonly"));
        assert!(gaps(settings("yes", "everysec", 0, 0)).contains("appendfsync"));
        assert!(gaps(settings("yes", "always", 1, 0)).contains("failover"));
        assert_eq!(durability_gaps(&settings("no", "no", 1, 0)).len(), 2);
    }
}
