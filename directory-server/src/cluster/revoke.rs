//! Revoked tokens: replicated state, told to the volume servers.

use super::*;

impl Cluster {
    /// The revoked token ids, as the gate checks them.
    pub fn revocations(&self) -> std::sync::Arc<hayloft_access::grpc::Revoked> {
        std::sync::Arc::clone(&self.revocations)
    }

    /// The revoked token ids (told to volume servers with heartbeat
    /// answers).
    pub fn revoked_tokens(&self) -> Vec<String> {
        self.inner.lock().state.revoked.keys().cloned().collect()
    }

    /// Revokes the token `token_id` until `expires_at` (Unix seconds):
    /// every server refuses it from the moment it hears (directory nodes
    /// at once, volume servers at their next heartbeat).
    pub async fn revoke_token(&self, token_id: &str, expires_at: u64) -> Result<()> {
        self.propose(Command::RevokeToken {
            token_id: token_id.to_owned(),
            expires_at,
            now: unix_now(),
        })
        .await?;
        Ok(())
    }
}
