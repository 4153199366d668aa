//! Push tokens on Redis: one hash per client in its slot (`P push`), field
//! `<provider>|<token>`, value `<registered_ms> [<app>]` (`push_token.lua`).

use async_trait::async_trait;
use redis::Value;

use super::{unavailable, RedisStore};
use crate::push_tokens::{PushProvider, PushToken, PushTokens, MAX_PUSH_TOKENS, PUSH_TOKEN_TTL_MS};
use crate::StoreError;

const PUSH_TOKEN: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/push_token.lua"));

fn field(provider: PushProvider, token: &str) -> String {
    [provider.as_str(), "|", token].concat()
}

#[async_trait]
impl PushTokens for RedisStore {
    async fn register_push_token(&self, client_id: &str, token: &PushToken) -> Result<(), StoreError> {
        let mut value = itoa::Buffer::new().format(token.registered_ms).to_owned();
        if let Some(app) = &token.app {
            value.push(' ');
            value.push_str(app);
        }
        let mut call = redis::cmd("EVAL");
        call.arg(PUSH_TOKEN)
            .arg(1)
            .arg(self.keys.client_key(client_id, "push"))
            .arg(field(token.provider, &token.token))
            .arg(value)
            .arg(MAX_PUSH_TOKENS)
            .arg(PUSH_TOKEN_TTL_MS)
            .arg(token.registered_ms);
        self.conn.run_all(vec![call]).await.map_err(unavailable)?;
        Ok(())
    }

    async fn push_tokens(&self, client_id: &str, now_ms: u64) -> Result<Vec<PushToken>, StoreError> {
        let mut read = redis::cmd("HGETALL");
        read.arg(self.keys.client_key(client_id, "push"));
        let reply = self.conn.run_all(vec![read]).await.map_err(unavailable)?;
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        let mut pairs = Vec::new();
        match reply.into_iter().next() {
            Some(Value::Array(items)) => {
                for pair in items.chunks(2) {
                    if let [f, v] = pair {
                        pairs.push((text(f), text(v)));
                    }
                }
            }
            Some(Value::Map(items)) => pairs.extend(items.iter().map(|(f, v)| (text(f), text(v)))),
            _ => {}
        }
        let mut tokens = Vec::with_capacity(pairs.len());
        for (f, v) in pairs {
            let (Some(f), Some(v)) = (f, v) else {
                return Err(StoreError::Corrupt("push token entry".into()));
            };
            let (provider, token) = f
                .split_once('|')
                .and_then(|(p, t)| Some((PushProvider::parse(p)?, t)))
                .ok_or_else(|| StoreError::Corrupt(format!("push token field {f:?}")))?;
            let (time, app) = v.split_once(' ').map_or((v.as_str(), None), |(t, a)| (t, Some(a)));
            let registered_ms: u64 = time
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("push token value {v:?}")))?;
            tokens.push(PushToken {
                provider,
                token: token.to_owned(),
                app: app.map(str::to_owned),
                registered_ms,
            });
        }
        tokens.retain(|t| t.live(now_ms));
        tokens.sort_by_key(|t| std::cmp::Reverse(t.registered_ms));
        Ok(tokens)
    }

    async fn remove_push_token(
        &self,
        client_id: &str,
        provider: PushProvider,
        token: &str,
    ) -> Result<bool, StoreError> {
        let mut del = redis::cmd("HDEL");
        del.arg(self.keys.client_key(client_id, "push"))
            .arg(field(provider, token));
        let reply = self.conn.run_all(vec![del]).await.map_err(unavailable)?;
        Ok(matches!(reply.first(), Some(Value::Int(1))))
    }
}
