//! Redaction: what looks like a secret is replaced before an event is stored
//! (PROTOCOL §8).
//!
//! Agents pass whatever their tools saw: arguments with API keys, request
//! headers, database URLs, a config dump as a JSON string. Watchers should see
//! what the agent did, not its credentials, and the store should not keep them.
//! [`redact_event`] is the one pass every event goes through on its way into a
//! log, whatever its source (an HTTP publisher, an in-process agent, AG-UI). It
//! applies four rules to the event's data, at any depth:
//!
//! 1. **Keys.** Under an object key that contains a secret word
//!    ([`SECRET_WORDS`], case-insensitive), every string becomes `"[REDACTED]"`.
//!    Numbers, booleans and `null` stay: `input_tokens: 12` is not a secret.
//! 2. **Pairs.** Header lists: `["Authorization", "Bearer …"]` and
//!    `{"name": "Cookie", "value": "…"}` (also `key`/`header` for `name`).
//! 3. **JSON in strings.** A string holding a JSON object or array is redacted as
//!    that value and written back compactly.
//! 4. **Text.** In any other string: credentials in URLs and DSNs
//!    (`postgres://u:PW@host`), secret assignments (`?access_token=…`,
//!    `API_KEY=…`, `"password": "…"`), `Authorization:`/`Cookie:` header lines,
//!    bearer and basic credentials, PEM private keys, and well-known key formats
//!    (`sk-…`, `ghp_…`, `github_pat_…`, `AKIA…`, `xox…-`, `AIza…`, JWTs).
//!
//! The ids that correlate events (`tool_call_id`, `message_id`, names and codes
//! at the top of the data) are left alone, so a redacted run still tells a
//! consistent story. Redaction is idempotent: redacting twice changes nothing more.

use std::borrow::Cow;
use std::sync::LazyLock;

use aho_corasick::AhoCorasick;
use regex::{Captures, Regex, RegexSet};
use serde_json::{Map, Value};

use crate::event::{NAME_FIELDS, NewEvent};

/// The value that replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Words that make a key look secret (a key containing one, case-insensitively).
pub const SECRET_WORDS: [&str; 14] = [
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "auth",
    "credential",
    "cookie",
    "session",
    "private",
    "jwt",
    "bearer",
    "key",
];

/// Deepest nesting walked; anything deeper is replaced whole (a value that deep
/// is not a log line anyone reads, and the walk must not overflow the stack).
const MAX_DEPTH: usize = 128;
/// How many times a JSON string inside a JSON string is opened.
const MAX_EMBEDDED: usize = 3;

/// True when `key` contains one of [`SECRET_WORDS`], case-insensitively.
pub fn is_secret_key(key: &str) -> bool {
    // Runs for every key of every event: compare in place rather than lowercase a copy.
    let bytes = key.as_bytes();
    SECRET_WORDS.iter().any(|word| bytes.windows(word.len()).any(|w| w.eq_ignore_ascii_case(word.as_bytes())))
}

/// Redacts an event's data in place (see the module docs).
pub fn redact_event(event: &mut NewEvent) {
    redact_data(&mut event.data);
}

/// Redacts the fields of an event's `data`; its correlating ids stay as sent.
pub fn redact_data(data: &mut Map<String, Value>) {
    for (key, value) in data.iter_mut() {
        if NAME_FIELDS.contains(&key.as_str()) && value.is_string() {
            continue;
        }
        if is_secret_key(key) {
            redact_strings(value, 0);
        } else {
            redact_value(value, 0, 0);
        }
    }
}

/// Redacts `value` at any depth (rules 1–4); answers whether anything changed.
pub fn redact_value(value: &mut Value, depth: usize, embedded: usize) -> bool {
    if depth > MAX_DEPTH {
        *value = Value::String(REDACTED.to_owned());
        return true;
    }
    match value {
        Value::Object(map) => {
            let mut changed = redact_pair_object(map, depth);
            for (key, v) in map.iter_mut() {
                changed |= if is_secret_key(key) {
                    redact_strings(v, depth + 1)
                } else {
                    redact_value(v, depth + 1, embedded)
                };
            }
            changed
        }
        Value::Array(items) => {
            if let [Value::String(name), secret] = items.as_mut_slice()
                && is_secret_key(name)
            {
                return redact_strings(secret, depth + 1);
            }
            let mut changed = false;
            for item in items.iter_mut() {
                changed |= redact_value(item, depth + 1, embedded);
            }
            changed
        }
        Value::String(text) => match redact_string(text, embedded) {
            Some(clean) => {
                *text = clean;
                true
            }
            None => false,
        },
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// `{"name": "Authorization", "value": "…"}`: the value goes when the name looks secret.
fn redact_pair_object(map: &mut Map<String, Value>, depth: usize) -> bool {
    let named_secret = ["name", "key", "header"]
        .iter()
        .any(|field| map.get(*field).and_then(Value::as_str).is_some_and(is_secret_key));
    match map.get_mut("value") {
        Some(value) if named_secret => redact_strings(value, depth + 1),
        _ => false,
    }
}

/// Rule 1: every string under a secret key becomes [`REDACTED`].
fn redact_strings(value: &mut Value, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        *value = Value::String(REDACTED.to_owned());
        return true;
    }
    match value {
        Value::String(s) if s == REDACTED => false,
        Value::String(s) => {
            REDACTED.clone_into(s);
            true
        }
        Value::Array(items) => items.iter_mut().fold(false, |changed, v| redact_strings(v, depth + 1) | changed),
        Value::Object(map) => map.values_mut().fold(false, |changed, v| redact_strings(v, depth + 1) | changed),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Rules 3 and 4 for one string; `None` when it holds nothing to redact.
fn redact_string(text: &str, embedded: usize) -> Option<String> {
    let trimmed = text.trim();
    let looks_like_json =
        (trimmed.starts_with('{') && trimmed.ends_with('}')) || (trimmed.starts_with('[') && trimmed.ends_with(']'));
    if looks_like_json
        && embedded < MAX_EMBEDDED
        && let Ok(mut inner) = serde_json::from_str::<Value>(trimmed)
    {
        return redact_value(&mut inner, 0, embedded + 1).then(|| inner.to_string());
    }
    match redact_text(text) {
        Cow::Borrowed(_) => None,
        Cow::Owned(clean) => Some(clean),
    }
}

/// One text rule: the pattern, and which of its groups are kept around the secret.
struct TextRule {
    pattern: Regex,
    /// Groups before the secret that stay (e.g. `password=`); the secret is the next group,
    /// or the whole match when there are none.
    keep: usize,
    /// A secret only when it holds a digit (bearer and basic credentials, so prose
    /// like "Basic functionality" stays).
    needs_digit: bool,
}

/// The secret words as a regex alternation.
fn words() -> String {
    SECRET_WORDS.join("|")
}

/// The patterns of rule 4. Each is linear-time (the regex crate has no backtracking).
static TEXT_RULES: LazyLock<Vec<TextRule>> = LazyLock::new(|| {
    let name = format!(r"[A-Za-z0-9_.\-]*(?:{})[A-Za-z0-9_.\-]*", words());
    let rules: [(String, usize, bool); 7] = [
        // scheme://user:PASSWORD@host
        (r"(?i)(\b[a-z][a-z0-9+.\-]*://[^\s:/@?#]*:)([^\s/@?#]+)@".to_owned(), 1, false),
        // access_token=…, API_KEY=…
        (format!(r"(?i)(\b{name}=)([^\s&#;,'\x22]+)"), 1, false),
        // "password": "…" in a JSON fragment that did not parse
        (format!(r#"(?i)("{name}"\s*:\s*)("(?:[^"\\]|\\.)*")"#), 1, false),
        // header lines
        (
            r"(?i)(\b(?:proxy-authorization|authorization|set-cookie|cookie|x-api-key)\s*:\s*)([^\r\n]+)".to_owned(),
            1,
            false,
        ),
        // Bearer …, Basic …
        (r"(?i)(\b(?:bearer|basic)\s+)([A-Za-z0-9._~+/\-]{8,}=*)".to_owned(), 1, true),
        // PEM private keys, to their end line or the end of the text
        (r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z ]*PRIVATE KEY-----|$)".to_owned(), 0, false),
        // well-known key formats
        (
            concat!(
                r"\b(?:sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_\-]{16,}",
                r"|[sr]k_(?:live|test)_[A-Za-z0-9]{10,}",
                r"|gh[pousr]_[A-Za-z0-9]{20,}",
                r"|github_pat_[A-Za-z0-9_]{20,}",
                r"|(?:AKIA|ASIA)[A-Z0-9]{16}",
                r"|xox[abposr]-[A-Za-z0-9\-]{10,}",
                r"|AIza[0-9A-Za-z_\-]{35}",
                r"|eyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*)"
            )
            .to_owned(),
            0,
            false,
        ),
    ];
    rules
        .into_iter()
        // The patterns are constants: `every_rule_compiles` proves each one builds.
        .filter_map(|(pattern, keep, needs_digit)| {
            Regex::new(&pattern).ok().map(|pattern| TextRule { pattern, keep, needs_digit })
        })
        .collect()
});

/// The same patterns as one set, so the common case (nothing secret) is one scan.
static ANY_RULE: LazyLock<Option<RegexSet>> =
    LazyLock::new(|| RegexSet::new(TEXT_RULES.iter().map(|rule| rule.pattern.as_str())).ok());

/// Literals at least one of which every text rule's match contains. Most text
/// (answers streamed token by token, thoughts) holds none of them, and this one
/// scan costs a fraction of running the patterns.
const TRIGGERS: [&str; 23] = [
    "=",
    "://",
    "\"",
    "bearer",
    "basic",
    "authorization",
    "cookie",
    "x-api-key",
    "-----begin",
    "sk-",
    "sk_",
    "rk_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "akia",
    "asia",
    "xox",
    "aiza",
    "eyj",
];

static TRIGGER: LazyLock<Option<AhoCorasick>> =
    LazyLock::new(|| AhoCorasick::builder().ascii_case_insensitive(true).build(TRIGGERS).ok());

/// Rule 4 over free text; borrowed when nothing matched.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    if TRIGGER.as_ref().is_some_and(|gate| !gate.is_match(text)) {
        return Cow::Borrowed(text);
    }
    let Some(set) = ANY_RULE.as_ref() else { return Cow::Borrowed(text) };
    let matched = set.matches(text);
    if !matched.matched_any() {
        return Cow::Borrowed(text);
    }
    let mut out = Cow::Borrowed(text);
    for index in matched.iter() {
        let rule = &TEXT_RULES[index];
        let replaced = rule.pattern.replace_all(&out, |caps: &Captures<'_>| replacement(rule, caps));
        if let Cow::Owned(s) = replaced {
            out = Cow::Owned(s);
        }
    }
    out
}

/// What one match becomes: its kept groups, then [`REDACTED`] (quoted if the secret was).
fn replacement(rule: &TextRule, caps: &Captures<'_>) -> String {
    let whole = caps.get(0).map_or("", |m| m.as_str());
    let secret = caps.get(rule.keep + 1).map_or(whole, |m| m.as_str());
    if secret == REDACTED
        || secret == "\"[REDACTED]\""
        || (rule.needs_digit && !secret.bytes().any(|b| b.is_ascii_digit()))
    {
        return whole.to_owned();
    }
    let mut out = String::with_capacity(whole.len().min(64));
    for group in 1..=rule.keep {
        out.push_str(caps.get(group).map_or("", |m| m.as_str()));
    }
    if secret.starts_with('"') {
        out.push('"');
        out.push_str(REDACTED);
        out.push('"');
    } else {
        out.push_str(REDACTED);
    }
    // What the pattern matched after the secret (the `@` of a URL) stays.
    if let Some(m) = caps.get(rule.keep + 1).filter(|_| rule.keep > 0) {
        out.push_str(&whole[m.end() - caps.get(0).map_or(0, |w| w.start())..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn redacted(mut v: Value) -> Value {
        redact_value(&mut v, 0, 0);
        v
    }

    fn text(s: &str) -> String {
        redact_text(s).into_owned()
    }

    #[test]
    fn every_rule_compiles() {
        assert_eq!(TEXT_RULES.len(), 7);
        assert!(ANY_RULE.is_some());
    }

    #[test]
    fn keys_by_the_extended_list_at_any_depth() {
        let v = redacted(json!({
            "user": "bob", "Password": "hunter2", "PASSWD": "x", "pwd": "y", "jwt": "z", "Bearer": "b",
            "cookie": "c", "passphrase": "p", "session_id": "s", "private_key": "k",
            "nested": {"api_key": "k", "list": [{"authToken": "t", "q": 1}]},
            "usage": {"input_tokens": 12, "secret_ok": true},
            "auth": {"user": "u", "pass": "p", "port": 5432},
        }));
        assert_eq!(
            v,
            json!({
                "user": "bob", "Password": REDACTED, "PASSWD": REDACTED, "pwd": REDACTED, "jwt": REDACTED,
                "Bearer": REDACTED, "cookie": REDACTED, "passphrase": REDACTED, "session_id": REDACTED,
                "private_key": REDACTED,
                "nested": {"api_key": REDACTED, "list": [{"authToken": REDACTED, "q": 1}]},
                "usage": {"input_tokens": 12, "secret_ok": true},
                "auth": {"user": REDACTED, "pass": REDACTED, "port": 5432},
            })
        );
    }

    #[test]
    fn header_pairs_in_both_shapes() {
        let v = redacted(json!({"headers": [["Authorization", "Bearer abc"], ["Accept", "text/html"]],
            "har": [{"name": "Cookie", "value": "sid=1"}, {"name": "Host", "value": "x"}]}));
        assert_eq!(
            v,
            json!({"headers": [["Authorization", REDACTED], ["Accept", "text/html"]],
                "har": [{"name": "Cookie", "value": REDACTED}, {"name": "Host", "value": "x"}]})
        );
    }

    #[test]
    fn json_carried_in_strings() {
        let v = redacted(json!({"args": "{\"q\":\"x\",\"password\":\"hunter2\"}", "plain": "{not json"}));
        assert_eq!(v, json!({"args": "{\"password\":\"[REDACTED]\",\"q\":\"x\"}", "plain": "{not json"}));
        let twice = json!({"a": json!({"b": json!({"token": "t"}).to_string()}).to_string()});
        assert!(!redacted(twice).to_string().contains("\\\"t\\\""));
    }

    #[test]
    fn credentials_in_free_text() {
        let cases = [
            ("postgres://app:PW123@db:5432/x", "postgres://app:[REDACTED]@db:5432/x"),
            ("see https://h/cb?access_token=abc.def&x=1", "see https://h/cb?access_token=[REDACTED]&x=1"),
            ("export OPENAI_API_KEY=xyz", "export OPENAI_API_KEY=[REDACTED]"),
            ("{\"password\": \"hun\\\"ter\" trailing", "{\"password\": \"[REDACTED]\" trailing"),
            ("Authorization: Basic dXNlcjpwYXNz1\r\nAccept: */*", "Authorization: [REDACTED]\r\nAccept: */*"),
            ("curl -H 'x' bearer abc.def.123456", "curl -H 'x' bearer [REDACTED]"),
            ("key sk-proj-abcdefghijklmnop1234 ok", "key [REDACTED] ok"),
            ("ghp_abcdefghijklmnopqrstuvwxyz0123 and AKIAABCDEFGHIJKLMNOP", "[REDACTED] and [REDACTED]"),
            ("t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig-_x", "t=[REDACTED]"),
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\nok", "[REDACTED]\nok"),
        ];
        for (input, want) in cases {
            assert_eq!(text(input), want, "{input}");
        }
    }

    #[test]
    fn prose_and_ids_stay() {
        for s in ["Basic functionality works", "the bearer of news", "a token of thanks", "12 tokens", "ok"] {
            assert_eq!(text(s), s);
        }
        let mut data = json!({"tool_call_id": "call_sk-abcdefghijklmnopqrstu", "tool_name": "auth",
            "args": {"q": 1}})
        .as_object()
        .cloned()
        .unwrap_or_default();
        let before = data.clone();
        redact_data(&mut data);
        assert_eq!(data, before);
    }

    #[test]
    fn deep_values_do_not_overflow() {
        let mut v = json!("x");
        // Deeper than any parsed body (serde_json stops at 128), shallow enough to drop.
        for _ in 0..1_000 {
            v = json!([v]);
        }
        assert!(redact_value(&mut v, 0, 0));
        assert!(v.to_string().contains(REDACTED));
    }

    /// A secret that cannot occur by chance in the generated filler.
    fn secret() -> impl Strategy<Value = String> {
        "[a-z0-9]{12}".prop_map(|s| format!("Zq9{s}"))
    }

    fn secret_key() -> impl Strategy<Value = String> {
        (prop::sample::select(SECRET_WORDS.to_vec()), "[a-z_]{0,4}", "[a-z_]{0,4}", any::<bool>()).prop_map(
            |(word, pre, post, upper)| {
                let key = format!("{pre}{word}{post}");
                if upper { key.to_ascii_uppercase() } else { key }
            },
        )
    }

    /// One planted secret, as a value, and the secret text that must not survive.
    fn planted() -> impl Strategy<Value = (Value, String)> {
        prop_oneof![
            (secret_key(), secret()).prop_map(|(k, s)| (json!({ k: s.clone() }), s)),
            (secret_key(), secret()).prop_map(|(k, s)| (json!([[k, format!("Bearer {s}")]]), s)),
            (secret_key(), secret()).prop_map(|(k, s)| (json!({"name": k, "value": s.clone()}), s)),
            (secret_key(), secret()).prop_map(|(k, s)| (Value::String(json!({ k: s.clone() }).to_string()), s)),
            secret().prop_map(|s| (Value::String(format!("redis://u:{s}@h:6379/0")), s)),
            (secret_key(), secret()).prop_map(|(k, s)| (Value::String(format!("GET /x?{k}={s}&y=1")), s)),
            secret().prop_map(|s| (Value::String(format!("use sk-{s}{s} now")), s)),
            secret().prop_map(|s| (Value::String(format!("ghp_{s}{s}")), s)),
            secret().prop_map(|s| (Value::String(format!("eyJhbGci.eyJ{s}.c2ln")), s)),
        ]
    }

    /// Filler: nested values with innocent keys and strings.
    fn filler() -> impl Strategy<Value = Value> {
        let leaf =
            prop_oneof![Just(Value::Null), any::<i32>().prop_map(Value::from), "[a-z ]{0,12}".prop_map(Value::from),];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("(q|name|value|items|note)", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Puts `secret` somewhere inside `host`, at a position chosen by `path`,
    /// never inside an earlier planted value (that would change its shape).
    fn plant(host: &mut Value, secret: Value, path: &[usize]) {
        match (host, path.split_first()) {
            (Value::Array(items), Some((&i, rest))) if !items.is_empty() => {
                let n = items.len();
                plant(&mut items[i % n], secret, rest);
            }
            (Value::Object(map), Some((&i, rest))) if map.keys().any(|k| k != "planted") => {
                let mut open: Vec<_> = map.iter_mut().filter(|(k, _)| *k != "planted").map(|(_, v)| v).collect();
                let n = open.len();
                plant(open.swap_remove(i % n), secret, rest);
            }
            (host, _) => *host = json!({"innocent": host.take(), "planted": secret}),
        }
    }

    proptest! {
        #[test]
        fn no_planted_secret_reaches_a_watcher(
            host in filler(),
            plants in prop::collection::vec((planted(), prop::collection::vec(any::<usize>(), 0..5)), 1..5),
        ) {
            let mut value = host;
            let mut secrets = Vec::new();
            for ((secret_value, secret), path) in plants {
                plant(&mut value, secret_value, &path);
                secrets.push(secret);
            }
            let mut data = Map::new();
            data.insert("args".into(), value);
            redact_data(&mut data);
            let seen = Value::Object(data.clone()).to_string();
            for secret in &secrets {
                prop_assert!(!seen.contains(secret.as_str()), "{secret} in {seen}");
            }
            // Idempotent: a second pass finds nothing more.
            let mut again = data.clone();
            redact_data(&mut again);
            prop_assert_eq!(again, data);
        }
    }
}
