//! Argon2id password hashing and verification on the blocking thread pool.
//!
//! Each hash takes tens of milliseconds and about 19 MiB of memory (argon2 0.5 defaults:
//! m=19456 KiB, t=2, p=1), so a semaphore caps how many run at once.

use std::sync::Arc;

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::{OnceCell, Semaphore};

/// Hashes and verifies passwords without blocking the async workers.
#[derive(Clone)]
pub(crate) struct Passwords {
    /// Permits for concurrent hash computations: one per available CPU.
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when a login names an unknown user so
    /// that the reply takes as long as a wrong password.
    decoy_hash: Arc<OnceCell<String>>,
}

impl Passwords {
    pub fn new() -> Self {
        let parallelism = std::thread::available_parallelism().map_or(1, |count| count.get());
        Passwords { permits: Arc::new(Semaphore::new(parallelism)), decoy_hash: Arc::new(OnceCell::new()) }
    }

    /// Hashes a password into an argon2id PHC string with a random salt.
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await.context("the password hasher is closed")?;
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|error| anyhow::anyhow!("failed to hash a password: {error}"))
        })
        .await
        .context("the password hashing task failed")?
    }

    /// Checks a password against a stored PHC hash, or against a decoy hash when `hash` is
    /// `None`, which always fails. A stored hash that cannot be parsed is an error.
    pub async fn verify(&self, password: String, hash: Option<String>) -> anyhow::Result<bool> {
        let (hash, is_decoy) = match hash {
            Some(hash) => (hash, false),
            None => (self.decoy_hash().await?, true),
        };
        let _permit = self.permits.acquire().await.context("the password hasher is closed")?;
        let matches = tokio::task::spawn_blocking(move || {
            let parsed =
                PasswordHash::new(&hash).map_err(|error| anyhow::anyhow!("a stored password hash is invalid: {error}"))?;
            Ok::<bool, anyhow::Error>(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .context("the password verification task failed")??;
        Ok(matches && !is_decoy)
    }

    async fn decoy_hash(&self) -> anyhow::Result<String> {
        let hash = self
            .decoy_hash
            .get_or_try_init(|| async {
                let decoy_password: [u8; 16] = rand::random();
                let decoy_password: String = decoy_password.iter().map(|byte| format!("{byte:02x}")).collect();
                self.hash(decoy_password).await
            })
            .await?;
        Ok(hash.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let passwords = Passwords::new();
        let hash = passwords.hash("secret12".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(passwords.verify("secret12".into(), Some(hash.clone())).await.unwrap());
        assert!(!passwords.verify("secret13".into(), Some(hash)).await.unwrap());
        assert!(!passwords.verify("secret12".into(), None).await.unwrap());
    }
}
