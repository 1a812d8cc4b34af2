//! `state.redis` in Dapr's layout: a key is a hash with `data` (the value bytes),
//! `version` (the ETag, incremented on every write) and `first-write` (`0`, present once the
//! key was written with first-write concurrency outside a transaction). Writes and deletes
//! are Lua scripts with the conditions of Dapr's component, so daprd and fngate can share
//! keys in both directions.

use super::{
    Concurrency, DeleteRequest, SetRequest, StateStore, StoreError, StoredItem, TransactionOp,
};
use crate::plan::RedisSettings;
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;

/// ARGV: expected version (`0` = none), value, `0` to mark first-write, TTL seconds (`""`
/// leaves the expiry alone, <= 0 removes it). The write is allowed when the key has no
/// version (or is not a hash: then it is replaced), when the version matches, or when no
/// version was expected and the key carries no first-write mark.
const SET_LUA: &str = r#"
local version = redis.pcall("HGET", KEYS[1], "version")
local broken = type(version) == "table"
if broken then redis.call("DEL", KEYS[1]) end
local marked = redis.pcall("HGET", KEYS[1], "first-write")
if not version or broken or version == "" or version == ARGV[1]
   or ((not marked or type(marked) == "table") and ARGV[1] == "0") then
  redis.call("HSET", KEYS[1], "data", ARGV[2])
  if ARGV[3] == "0" then redis.call("HSET", KEYS[1], "first-write", 0) end
  local v = redis.call("HINCRBY", KEYS[1], "version", 1)
  if ARGV[4] ~= "" then
    local ttl = tonumber(ARGV[4])
    if ttl > 0 then redis.call("EXPIRE", KEYS[1], ttl) else redis.call("PERSIST", KEYS[1]) end
  end
  return v
end
return redis.error_reply("failed to set key " .. KEYS[1])
"#;

/// ARGV: the ETag, or `0` for none. A missing key, or no ETag, deletes.
const DELETE_LUA: &str = r#"
local version = redis.pcall("HGET", KEYS[1], "version")
if not version or type(version) == "table" or version == "" or version == ARGV[1] or ARGV[1] == "0" then
  return redis.call("DEL", KEYS[1])
end
return redis.error_reply("failed to delete " .. KEYS[1])
"#;

// EVALSHA outside transactions (loaded on first use); inside MULTI plain EVAL, since a
// script missing from the server's cache would fail its command there.
static SET: LazyLock<Script> = LazyLock::new(|| Script::new(SET_LUA));
static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_LUA));

/// The Dapr features `state.redis` reports (without RedisJSON).
pub const FEATURES: &[&str] = &["ETAG", "TRANSACTIONAL", "TTL", "KEYS_LIKE"];

pub struct RedisStore {
    connection: ConnectionManager,
    connected: AtomicBool,
}

impl RedisStore {
    /// Connects lazily: a store that is down at start gives errors until it is back.
    pub fn new(settings: &RedisSettings) -> Result<RedisStore, String> {
        let (host, port) = settings
            .host
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .unwrap_or((settings.host.as_str(), 6379));
        let addr = if settings.tls {
            redis::ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: settings.insecure_skip_verify,
                tls_params: None,
            }
        } else {
            redis::ConnectionAddr::Tcp(host.to_owned(), port)
        };
        let mut redis_info = redis::RedisConnectionInfo::default().set_db(settings.db);
        if let Some(u) = &settings.username {
            redis_info = redis_info.set_username(u);
        }
        if let Some(p) = &settings.password {
            redis_info = redis_info.set_password(p);
        }
        let info =
            redis::IntoConnectionInfo::into_connection_info(format!("redis://{host}:{port}"))
                .map_err(|e| e.to_string())?
                .set_addr(addr)
                // Small requests and replies: Nagle would hold a write for the previous ACK.
                .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
                .set_redis_settings(redis_info);
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.dial_timeout))
            .set_response_timeout(Some(settings.command_timeout))
            .set_number_of_retries(2)
            .set_max_delay(std::time::Duration::from_secs(2));
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        Ok(RedisStore {
            connection,
            connected: AtomicBool::new(false),
        })
    }

    fn track<T>(&self, r: Result<T, RedisError>) -> Result<T, RedisError> {
        match &r {
            Ok(_) => self.connected.store(true, Ordering::Relaxed),
            Err(e) if is_unreachable(e) => self.connected.store(false, Ordering::Relaxed),
            Err(_) => self.connected.store(true, Ordering::Relaxed),
        }
        r
    }
}

fn is_unreachable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// A script's own refusal (`failed to set key ...`), as opposed to a store failure. Redis
/// clients read the reply's first word as its code: here `failed`.
fn refused(e: &RedisError) -> bool {
    !is_unreachable(e) && e.code() == Some("failed")
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn set_args(request: &SetRequest) -> Result<(String, &'static str, String), StoreError> {
    let version = match (&request.etag, request.concurrency) {
        (Some(etag), c) if c != Concurrency::LastWrite => {
            let n: i64 = etag.parse().map_err(|_| {
                StoreError::EtagInvalid(format!("strconv.Atoi: parsing {etag:?}: invalid syntax"))
            })?;
            n.to_string()
        }
        _ => "0".to_owned(),
    };
    let first_write = if request.concurrency == Concurrency::FirstWrite {
        "0"
    } else {
        "1"
    };
    let ttl = request.ttl.map(|t| t.to_string()).unwrap_or_default();
    Ok((version, first_write, ttl))
}

#[async_trait]
impl StateStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<StoredItem>, StoreError> {
        let mut c = self.connection.clone();
        let reply: Result<Vec<(Vec<u8>, Vec<u8>)>, RedisError> =
            self.track(redis::cmd("HGETALL").arg(key).query_async(&mut c).await);
        let fields = match reply {
            Ok(f) => f,
            Err(e) if e.code() == Some("WRONGTYPE") => {
                // A plain string (not written by Dapr): its bytes, without an ETag.
                let data: Option<Vec<u8>> = self
                    .track(redis::cmd("GET").arg(key).query_async(&mut c).await)
                    .map_err(unavailable)?;
                return Ok(data.map(|d| StoredItem {
                    data: d.into(),
                    ..StoredItem::default()
                }));
            }
            Err(e) => return Err(unavailable(e)),
        };
        if fields.is_empty() {
            return Ok(None);
        }
        let (mut data, mut version) = (None, None);
        for (k, v) in fields {
            match &k[..] {
                b"data" => data = Some(v),
                b"version" => version = Some(v),
                _ => {}
            }
        }
        match (data, version) {
            (Some(d), Some(v)) => Ok(Some(StoredItem {
                data: Bytes::from(d),
                etag: Some(String::from_utf8_lossy(&v).into_owned()),
                metadata: Vec::new(),
            })),
            _ => Err(StoreError::Failed(
                "required hash field 'data' or 'version' was not found".into(),
            )),
        }
    }

    async fn set(&self, request: SetRequest) -> Result<(), StoreError> {
        let (version, first_write, ttl) = set_args(&request)?;
        let mut c = self.connection.clone();
        let r: Result<Value, RedisError> = self.track(
            SET.key(&request.key)
                .arg(&version)
                .arg(&request.value[..])
                .arg(first_write)
                .arg(&ttl)
                .invoke_async(&mut c)
                .await,
        );
        match r {
            Ok(_) => Ok(()),
            Err(e) if refused(&e) && request.etag.is_some() => {
                Err(StoreError::EtagMismatch(e.to_string()))
            }
            Err(e) if refused(&e) => Err(StoreError::Failed(e.to_string())),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StoreError> {
        let mut c = self.connection.clone();
        let etag = request.etag.as_deref().unwrap_or("0");
        let r: Result<Value, RedisError> = self.track(
            DELETE
                .key(&request.key)
                .arg(etag)
                .invoke_async(&mut c)
                .await,
        );
        match r {
            Ok(_) => Ok(()),
            Err(e) if refused(&e) => Err(StoreError::EtagMismatch(e.to_string())),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn transact(&self, ops: Vec<TransactionOp>) -> Result<(), StoreError> {
        // MULTI/EXEC as Dapr's component does: a refused script fails only its own
        // command; the others are applied and the first error is reported.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for op in &ops {
            match op {
                TransactionOp::Upsert(request) => {
                    let (version, _, ttl) = set_args(request)?;
                    // Never marked first-write inside a transaction (as Dapr).
                    pipe.cmd("EVAL")
                        .arg(SET_LUA)
                        .arg(1)
                        .arg(&request.key)
                        .arg(version)
                        .arg(&request.value[..])
                        .arg("1")
                        .arg(ttl);
                }
                TransactionOp::Delete(request) => {
                    pipe.cmd("EVAL")
                        .arg(DELETE_LUA)
                        .arg(1)
                        .arg(&request.key)
                        .arg(request.etag.as_deref().unwrap_or("0"));
                }
            }
        }
        let mut c = self.connection.clone();
        let r: Result<Vec<Value>, RedisError> = self.track(pipe.query_async(&mut c).await);
        match r {
            Ok(replies) => match replies.into_iter().find_map(|v| match v {
                Value::ServerError(e) => Some(e),
                _ => None,
            }) {
                Some(e) => Err(StoreError::Failed(format!("{e:?}"))),
                None => Ok(()),
            },
            Err(e) if is_unreachable(&e) => Err(unavailable(e)),
            Err(e) => Err(StoreError::Failed(e.to_string())),
        }
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}
