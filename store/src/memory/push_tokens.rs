//! Push tokens in memory: the rules of `push_token.lua`.

use async_trait::async_trait;

use super::MemoryStore;
use crate::push_tokens::{merge_token, PushProvider, PushToken, PushTokens};
use crate::StoreError;

#[async_trait]
impl PushTokens for MemoryStore {
    async fn register_push_token(&self, client_id: &str, token: &PushToken) -> Result<(), StoreError> {
        let mut tokens = self.push_tokens.entry(client_id.to_owned()).or_default();
        merge_token(&mut tokens, token, token.registered_ms);
        Ok(())
    }

    async fn push_tokens(&self, client_id: &str, now_ms: u64) -> Result<Vec<PushToken>, StoreError> {
        Ok(self
            .push_tokens
            .get(client_id)
            .map(|t| t.iter().filter(|t| t.live(now_ms)).cloned().collect())
            .unwrap_or_default())
    }

    async fn remove_push_token(
        &self,
        client_id: &str,
        provider: PushProvider,
        token: &str,
    ) -> Result<bool, StoreError> {
        let Some(mut tokens) = self.push_tokens.get_mut(client_id) else {
            return Ok(false);
        };
        let before = tokens.len();
        tokens.retain(|t| !(t.provider == provider && t.token == token));
        Ok(tokens.len() < before)
    }
}

impl MemoryStore {
    /// Forgets tokens past their life (from the sweep).
    pub(super) fn forget_old_push_tokens(&self, now_ms: u64) {
        self.push_tokens.retain(|_, tokens| {
            tokens.retain(|t| t.live(now_ms));
            !tokens.is_empty()
        });
    }
}
