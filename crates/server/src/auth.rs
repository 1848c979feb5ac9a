//! Who is calling: a user (JWT), a publisher (publish key) or an operator (admin key).
//!
//! Subscribers present a JWT whose `sub` names the user, verified with a shared
//! HS256 secret, an RS256/ES256 public key, or a JWKS file (by `kid`); `exp` is
//! required, `nbf` honoured, `iss` and `aud` checked when configured.
//! Publishers and operators present opaque keys, compared in constant time.
//! Publish keys may also live in a file that is re-read when it changes, so
//! keys rotate without a restart. In dev mode the server makes up its own JWT
//! secret, hands out tokens at `/dev/token`, uses a well-known publish key if
//! none is set, and opens the operator routes.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentwire_protocol::UserId;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::{DEV_PUBLISH_KEY, ServerConfig};

/// A token that does not let its bearer in, or credentials that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("cannot load credentials: {0}")]
    Config(String),
}

/// The claims agentwire reads from a subscriber's JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A subscriber, until `exp` (seconds since the epoch).
    User {
        id: UserId,
        exp: u64,
    },
    /// A publisher; `key` tells its publish keys apart (for rate limits) without holding the key.
    Publisher {
        key: u64,
    },
    Operator,
}

/// How subscriber tokens are verified.
enum Verifier {
    /// One key for every token (HS256 secret, or an RS256/ES256 public key).
    Key(DecodingKey),
    /// Keys by `kid`, with the algorithm each declares.
    Jwks(Vec<(String, DecodingKey, Algorithm)>),
}

/// Publish keys from a file, re-read when the file changes.
struct KeysFile {
    path: PathBuf,
    modified: Mutex<Option<SystemTime>>,
}

/// The server's credentials.
pub struct Auth {
    /// Signs tokens (dev mode's `/dev/token`, tests); only with an HS256 secret.
    encoding: Option<EncodingKey>,
    verifier: Verifier,
    validation: Validation,
    static_keys: Vec<Vec<u8>>,
    file_keys: RwLock<Vec<Vec<u8>>>,
    keys_file: Option<KeysFile>,
    admin_key: Option<Vec<u8>>,
    dev_mode: bool,
    /// The furthest `exp` accepted, in seconds from now.
    max_lifetime: u64,
}

/// Shortest HS256 secret accepted: guessing it must be out of reach.
pub const MIN_SECRET_BYTES: usize = 32;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn key_matches(candidate: &[u8], key: &[u8]) -> bool {
    candidate.ct_eq(key).into()
}

/// A stable id for a key that does not reveal it (FNV-1a; only for telling keys apart).
fn key_id(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn config_error(what: &str) -> impl Fn(jsonwebtoken::errors::Error) -> AuthError + '_ {
    move |e| AuthError::Config(format!("{what}: {e}"))
}

fn read(path: &PathBuf) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|e| AuthError::Config(format!("{}: {e}", path.display())))
}

fn parse_keys(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

impl Auth {
    /// Credentials from the settings. In dev mode without a secret, a random one
    /// is made up for this process.
    pub fn from_config(config: &ServerConfig) -> Result<Self, AuthError> {
        let dev_mode = config.dev_mode();
        let (verifier, algorithms, encoding) = if let Some(path) = &config.jwt_jwks {
            let set: JwkSet = serde_json::from_slice(&read(path)?)
                .map_err(|e| AuthError::Config(format!("{}: not a JWKS: {e}", path.display())))?;
            let mut keys = Vec::new();
            for jwk in &set.keys {
                let kid = jwk.common.key_id.clone().unwrap_or_default();
                let alg = match jwk.common.key_algorithm.map(|a| a.to_string()) {
                    Some(a) => a.parse::<Algorithm>().map_err(config_error("JWKS key algorithm"))?,
                    None => match jwk.algorithm {
                        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                        _ => Algorithm::RS256,
                    },
                };
                keys.push((kid, DecodingKey::from_jwk(jwk).map_err(config_error("JWKS key"))?, alg));
            }
            let algorithms: Vec<Algorithm> = keys.iter().map(|k| k.2).collect();
            (Verifier::Jwks(keys), algorithms, None)
        } else if let Some(path) = &config.jwt_public_key {
            let pem = read(path)?;
            match (DecodingKey::from_rsa_pem(&pem), DecodingKey::from_ec_pem(&pem)) {
                (Ok(key), _) => (Verifier::Key(key), vec![Algorithm::RS256], None),
                (_, Ok(key)) => (Verifier::Key(key), vec![Algorithm::ES256], None),
                (Err(e), _) => {
                    return Err(AuthError::Config(format!("{}: not an RSA or EC public key: {e}", path.display())));
                }
            }
        } else {
            let secret = match &config.jwt_secret {
                Some(s) if s.len() < MIN_SECRET_BYTES => {
                    return Err(AuthError::Config(format!(
                        "the JWT secret is {} bytes; it must be at least {MIN_SECRET_BYTES} random bytes",
                        s.len()
                    )));
                }
                Some(s) => s.as_bytes().to_vec(),
                None => rand::random::<[u8; 32]>().to_vec(),
            };
            let decoding = DecodingKey::from_secret(&secret).map_err(config_error("JWT secret"))?;
            let encoding = EncodingKey::from_secret(&secret).map_err(config_error("JWT secret"))?;
            (Verifier::Key(decoding), vec![Algorithm::HS256], Some(encoding))
        };
        let mut validation = Validation::new(algorithms.first().copied().unwrap_or(Algorithm::HS256));
        validation.algorithms = algorithms;
        validation.leeway = 5;
        validation.validate_nbf = true;
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
        }
        if let Some(aud) = &config.jwt_audience {
            validation.set_audience(&[aud]);
        }
        let mut static_keys: Vec<Vec<u8>> =
            config.publish_keys.iter().filter(|k| !k.is_empty()).map(|k| k.as_bytes().to_vec()).collect();
        if static_keys.is_empty() && config.publish_keys_file.is_none() && dev_mode {
            static_keys.push(DEV_PUBLISH_KEY.as_bytes().to_vec());
        }
        let auth = Self {
            encoding,
            verifier,
            validation,
            static_keys,
            file_keys: RwLock::new(Vec::new()),
            keys_file: config.publish_keys_file.clone().map(|path| KeysFile { path, modified: Mutex::new(None) }),
            admin_key: config.admin_key.as_ref().filter(|k| !k.is_empty()).map(|k| k.as_bytes().to_vec()),
            dev_mode,
            max_lifetime: config.jwt_max_lifetime.as_secs(),
        };
        auth.reload_publish_keys()?;
        Ok(auth)
    }

    /// Re-reads the publish-keys file if it changed since the last read;
    /// answers whether the keys changed. Keeps the old keys when the file cannot be read.
    pub fn reload_publish_keys(&self) -> Result<bool, AuthError> {
        let Some(file) = &self.keys_file else { return Ok(false) };
        let modified = std::fs::metadata(&file.path)
            .and_then(|m| m.modified())
            .map_err(|e| AuthError::Config(format!("{}: {e}", file.path.display())))?;
        let mut seen = file.modified.lock();
        if *seen == Some(modified) {
            return Ok(false);
        }
        let text = String::from_utf8(read(&file.path)?)
            .map_err(|e| AuthError::Config(format!("{}: {e}", file.path.display())))?;
        *self.file_keys.write() = parse_keys(&text);
        *seen = Some(modified);
        Ok(true)
    }

    /// Whether the server runs in dev mode.
    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// Whether any publish key is configured.
    pub fn has_publish_keys(&self) -> bool {
        !self.static_keys.is_empty() || !self.file_keys.read().is_empty()
    }

    fn publisher(&self, token: &[u8]) -> Option<u64> {
        // Every key is compared, so the time taken does not tell which one nearly matched.
        let file_keys = self.file_keys.read();
        let hit = self.static_keys.iter().chain(file_keys.iter()).fold(false, |hit, k| hit | key_matches(token, k));
        hit.then(|| key_id(token))
    }

    fn decoding_key(&self, token: &str) -> Result<&DecodingKey, AuthError> {
        match &self.verifier {
            Verifier::Key(key) => Ok(key),
            Verifier::Jwks(keys) => {
                let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
                let kid = header.kid.unwrap_or_default();
                keys.iter()
                    .find(|(k, _, alg)| *k == kid && *alg == header.alg)
                    .map(|(_, key, _)| key)
                    .ok_or_else(|| AuthError::Invalid("no key for this token's kid and alg".into()))
            }
        }
    }

    /// Who `token` belongs to: a publish key, the admin key, or a valid JWT.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        if let Some(key) = self.publisher(token.as_bytes()) {
            return Ok(Principal::Publisher { key });
        }
        if self.admin_key.as_ref().is_some_and(|k| key_matches(token.as_bytes(), k)) {
            return Ok(Principal::Operator);
        }
        let data = jsonwebtoken::decode::<Claims>(token, self.decoding_key(token)?, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if data.claims.exp > now_secs().saturating_add(self.max_lifetime) {
            return Err(AuthError::Invalid(format!("exp is more than {} s away", self.max_lifetime)));
        }
        let id = UserId::parse(&data.claims.sub).map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok(Principal::User { id, exp: data.claims.exp })
    }

    /// Whether `principal` may use the operator routes (always in dev mode).
    pub fn is_operator(&self, principal: Option<&Principal>) -> bool {
        self.dev_mode || matches!(principal, Some(Principal::Operator))
    }

    /// Signs a token for `user`, valid for `ttl` (dev mode's `/dev/token`, and
    /// tests). Only a server with an HS256 secret can sign.
    pub fn issue(&self, user: &UserId, ttl: Duration) -> Result<(String, u64), AuthError> {
        let encoding = self
            .encoding
            .as_ref()
            .ok_or_else(|| AuthError::Config("this server verifies tokens but does not sign them".into()))?;
        let iat = now_secs();
        let exp = iat + ttl.as_secs();
        let claims = Claims { sub: user.to_string(), exp, iat: Some(iat) };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok((token, exp))
    }
}

/// Seconds left before `exp`.
pub fn remaining(exp: u64) -> Duration {
    Duration::from_secs(exp.saturating_sub(now_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: Option<&str>, listen: &str) -> ServerConfig {
        let mut c = ServerConfig::from_env().unwrap();
        c.jwt_secret = secret.map(str::to_owned);
        c.listen = listen.parse().unwrap();
        c.publish_keys = vec!["pk-1".into(), "pk-2".into()];
        c.admin_key = Some("admin".into());
        c
    }

    #[test]
    fn tells_users_publishers_and_operators_apart() {
        let auth = Auth::from_config(&config(Some("s3cret-s3cret-s3cret-s3cret-s3cret"), "0.0.0.0:1")).unwrap();
        assert!(!auth.dev_mode());
        let alice = UserId::parse("alice").unwrap();
        let (token, exp) = auth.issue(&alice, Duration::from_secs(60)).unwrap();
        assert_eq!(auth.authenticate(Some(&token)).unwrap(), Principal::User { id: alice, exp });
        assert!(matches!(auth.authenticate(Some("pk-2")).unwrap(), Principal::Publisher { .. }));
        assert_ne!(auth.authenticate(Some("pk-1")).unwrap(), auth.authenticate(Some("pk-2")).unwrap());
        assert_eq!(auth.authenticate(Some("admin")).unwrap(), Principal::Operator);
        assert!(matches!(auth.authenticate(None), Err(AuthError::Missing)));
        assert!(matches!(auth.authenticate(Some("pk-3")), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn short_secrets_and_far_expiries_are_refused() {
        let short = Auth::from_config(&config(Some("x"), "0.0.0.0:1"));
        assert!(matches!(short, Err(AuthError::Config(m)) if m.contains("at least 32")));
        let auth = Auth::from_config(&config(Some("s3cret-s3cret-s3cret-s3cret-s3cret"), "0.0.0.0:1")).unwrap();
        let sign = |exp: u64| {
            let claims = Claims { sub: "bob".into(), exp, iat: None };
            let key = EncodingKey::from_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret").unwrap();
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        let week = 7 * 24 * 3600;
        assert!(auth.authenticate(Some(&sign(now_secs() + week - 60))).is_ok());
        assert!(auth.authenticate(Some(&sign(now_secs() + week + 60))).is_err());
        assert!(auth.authenticate(Some(&sign(now_secs() + 1_000_000 * 365 * 24 * 3600))).is_err());
    }

    #[test]
    fn refuses_forged_and_expired_tokens() {
        let auth = Auth::from_config(&config(Some("s3cret-s3cret-s3cret-s3cret-s3cret"), "0.0.0.0:1")).unwrap();
        let other = Auth::from_config(&config(Some("another-another-another-another-another"), "0.0.0.0:1")).unwrap();
        let bob = UserId::parse("bob").unwrap();
        let (forged, _) = other.issue(&bob, Duration::from_secs(60)).unwrap();
        assert!(auth.authenticate(Some(&forged)).is_err());
        let claims = Claims { sub: "bob".into(), exp: now_secs() - 60, iat: None };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret").unwrap(),
        )
        .unwrap();
        assert!(auth.authenticate(Some(&expired)).is_err());
    }

    #[test]
    fn dev_mode_needs_loopback_and_no_secret() {
        let mut c = config(None, "127.0.0.1:0");
        c.publish_keys.clear();
        let dev = Auth::from_config(&c).unwrap();
        assert!(dev.dev_mode());
        assert!(matches!(dev.authenticate(Some(DEV_PUBLISH_KEY)).unwrap(), Principal::Publisher { .. }));
        assert!(dev.is_operator(None));
        assert!(
            !Auth::from_config(&config(Some("s3cret-s3cret-s3cret-s3cret-s3cret"), "127.0.0.1:0")).unwrap().dev_mode()
        );
    }

    #[test]
    fn publish_keys_rotate_when_their_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# rotated weekly\nold-key\n").unwrap();
        let mut c = config(Some("s3cret-s3cret-s3cret-s3cret-s3cret"), "0.0.0.0:1");
        c.publish_keys.clear();
        c.publish_keys_file = Some(path.clone());
        let auth = Auth::from_config(&c).unwrap();
        assert!(auth.authenticate(Some("old-key")).is_ok());
        assert!(!auth.reload_publish_keys().unwrap(), "unchanged file, nothing to do");
        // Make sure the modification time moves even on coarse clocks.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "new-key\n").unwrap();
        let file = std::fs::File::options().append(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(1)).unwrap();
        assert!(auth.reload_publish_keys().unwrap());
        assert!(auth.authenticate(Some("old-key")).is_err());
        assert!(auth.authenticate(Some("new-key")).is_ok());
    }
}
