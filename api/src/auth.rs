//! Bearer-token authentication and roles.
//!
//! A token is `ort_` followed by 64 hex digits; Postgres stores only its SHA-256. Verifications
//! (including failures) are cached in-process for `cache.token_cache_secs`, so a cached GET costs
//! no database query for authentication; a change of a token committed anywhere (a revocation,
//! another role) is announced to every process (module `token_revocations`), which looks the
//! token up again before it next trusts it, and without the announcement the change takes
//! effect within that time.
//! A string that is not shaped like a token is refused before any I/O. `last_used_at` is
//! stamped in the background when the cache refreshes an entry, never on the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use moka::future::Cache as MokaCache;
use poem::Request;
use poem_openapi::auth::Bearer;
use poem_openapi::{Enum, SecurityScheme};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, FromQueryResult};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::app::AppState;
use crate::db::stmt;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::stored_enum::{UnknownStoredValue, enum_text, stored};

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Enum, clap::ValueEnum)]
#[oai(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything of its tenant.
    Viewer,
    /// Also creates, changes and deletes risks, mitigations and assets.
    Analyst,
    /// Also manages the tenant's API tokens.
    Admin,
}

/// The verified identity behind a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub token_id: Uuid,
    pub tenant_id: Uuid,
    pub role: Role,
}

impl Principal {
    /// Fails with 403 unless the token's role includes `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {} role; the token has {}",
                enum_text(&role),
                enum_text(&self.role)
            )))
        }
    }
}

/// `Authorization: Bearer <token>`, as created by `openrisk-api token create`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "ort_<64 hex digits>", checker = "check_bearer")]
pub struct BearerAuth(pub Principal);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    crate::app::record_route_and_tenant(req, None);
    let state = req.data::<Arc<AppState>>().ok_or_else(ApiError::internal)?;
    let principal = match req.data::<VerifiedBearer>() {
        Some(verified) if verified.token == bearer.token => verified.principal,
        _ => state.tokens.verify(&bearer.token).await?,
    };
    crate::app::record_route_and_tenant(req, Some(principal.tenant_id));
    Ok(principal)
}

/// A bearer token the hit path ([`crate::hit_path`]) verified before handing the request to the
/// router, so the operation's checker does not verify (and count) it twice.
#[derive(Debug, Clone)]
pub struct VerifiedBearer {
    pub token: String,
    pub principal: Principal,
}

/// A new token secret and its hash.
pub fn generate_token() -> (String, [u8; 32]) {
    let secret: [u8; 32] = rand::random();
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    let hash = hash_token(&token);
    (token, hash)
}

/// The prefix every token starts with.
const TOKEN_PREFIX: &str = "ort_";

/// Whether `token` has the shape [`generate_token`] gives every token (`ort_` and 64 lowercase
/// hex digits); anything else cannot be a token and is refused without a database query.
pub fn is_well_formed_token(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|secret| {
        secret.len() == 64 && secret.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Debug, FromQueryResult)]
struct TokenRow {
    id: Uuid,
    tenant_id: Uuid,
    role: String,
}

/// Why a token could not be looked up: Postgres failed (503, retry), or the token's row holds
/// a role this build does not know (500 naming it; never read as some other role).
#[derive(Debug, thiserror::Error)]
enum LookupError {
    #[error(transparent)]
    Db(#[from] DbErr),
    #[error(transparent)]
    Stored(#[from] UnknownStoredValue),
}

/// What a lookup of a token found (`None`: unknown or revoked), and when it began.
#[derive(Debug, Clone, Copy)]
struct Verification {
    principal: Option<Principal>,
    /// Nanoseconds after the verifier's epoch at which the lookup's query was about to be sent:
    /// what it read was committed by then or later.
    looked_up_at: u64,
}

/// How many lookups one request may start for a token that keeps being announced changed
/// meanwhile, before it is answered 503 rather than with what an older lookup read.
const LOOKUP_ROUNDS: usize = 2;

/// Verifies bearer tokens against Postgres through a short-lived in-process cache.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    db: DatabaseConnection,
    cache: MokaCache<[u8; 32], Verification>,
    /// When each token this process was told had changed was last told so (ns after `epoch`),
    /// kept as long as a verification stored after that may live (`ttl` and the longest lookup):
    /// a lookup that began before the change committed can store what it read after
    /// [`TokenVerifier::forget`] removed the token, and this keeps that from being honoured.
    changed: MokaCache<[u8; 32], u64>,
    /// Until when (ns after `epoch`; 0: never) `changed` may hold a token: outside that time no
    /// request pays the look into it (about 1 % of a cached GET's instructions).
    changed_until: Arc<AtomicU64>,
    /// When every token was last forgotten (ns after `epoch`): no verification from a lookup
    /// that began before it is honoured.
    every_token_forgotten_at: Arc<AtomicU64>,
    epoch: Instant,
    /// How long a token stays in `changed`.
    changed_for: Duration,
    /// Lookups in Postgres that may run at once. Every new well-formed token costs one, so a
    /// client inventing tokens would otherwise take every pooled connection from every tenant;
    /// bounded, it delays only other lookups of tokens not yet cached.
    lookups: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl TokenVerifier {
    /// A verifier whose answers live `ttl`, running at most `lookups_at_once` lookups at once,
    /// none longer than `longest_lookup` (the request timeout: a lookup runs for its requests).
    pub fn new(
        db: DatabaseConnection,
        ttl: Duration,
        longest_lookup: Duration,
        lookups_at_once: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cache = MokaCache::builder().max_capacity(100_000).time_to_live(ttl).build();
        let changed_for = ttl + longest_lookup;
        let changed = MokaCache::builder().max_capacity(100_000).time_to_live(changed_for).build();
        let lookups = Arc::new(Semaphore::new(lookups_at_once.max(1)));
        let (changed_until, every_token_forgotten_at, epoch) = (Arc::default(), Arc::default(), Instant::now());
        Self { db, cache, changed, changed_until, every_token_forgotten_at, epoch, changed_for, lookups, metrics }
    }

    /// The principal behind `token`, or 401.
    pub async fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        if !is_well_formed_token(token) {
            return Err(ApiError::unauthorized("the bearer token is not valid: tokens are `ort_` and 64 hex digits"));
        }
        let hash = hash_token(token);
        if let Some(verification) = self.cache.get(&hash).await {
            if self.is_current(&hash, verification).await {
                self.metrics.auth_cache(true);
                return verification.principal.ok_or_else(unknown_or_revoked);
            }
            self.cache.invalidate(&hash).await;
        }
        self.verify_through_database(hash).await
    }

    /// The cache's miss: the token is looked up (once, whoever else asks for it meanwhile), again
    /// while what the lookup found predates a change announced for the token. Boxed, so the hit's
    /// future, which every cached GET carries, stays small.
    fn verify_through_database(&self, hash: [u8; 32]) -> BoxFuture<'_, Result<Principal, ApiError>> {
        async move {
            for _ in 0..LOOKUP_ROUNDS {
                let mut loaded = false;
                let verification = self
                    .cache
                    .try_get_with(hash, async {
                        loaded = true;
                        let _turn = self.lookups.acquire().await.expect("the lookup semaphore is never closed");
                        let looked_up_at = self.now();
                        let principal = self.load(&hash).await?;
                        Ok(Verification { principal, looked_up_at })
                    })
                    .await
                    .map_err(|error: Arc<LookupError>| match &*error {
                        LookupError::Stored(unknown) => ApiError::from(unknown.clone()),
                        LookupError::Db(error) => {
                            tracing::warn!(%error, "cannot verify a bearer token");
                            ApiError::unavailable("the token cannot be verified right now; retry later")
                        }
                    })?;
                if self.is_current(&hash, verification).await {
                    self.metrics.auth_cache(!loaded);
                    return verification.principal.ok_or_else(unknown_or_revoked);
                }
                // Stored by a lookup that began before the latest change: nobody may use it.
                self.cache.invalidate(&hash).await;
            }
            Err(ApiError::unavailable("the token changed while it was being verified; retry"))
        }
        .boxed()
    }

    /// Looks the token up (one read) and stamps `last_used_at` in the background, so the
    /// request waits for no write.
    async fn load(&self, hash: &[u8; 32]) -> Result<Option<Principal>, LookupError> {
        let row = TokenRow::find_by_statement(stmt(
            "SELECT id, tenant_id, role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
            [hash.to_vec().into()],
        ))
        .one(&self.db)
        .await?;
        if let Some(row) = &row {
            let (db, id) = (self.db.clone(), row.id);
            tokio::spawn(async move {
                let stamp = stmt("UPDATE api_tokens SET last_used_at = now() WHERE id = $1", [id.into()]);
                if let Err(error) = db.execute_raw(stamp).await {
                    tracing::debug!(%error, "could not stamp a token's last use");
                }
            });
        }
        let principal = |row: TokenRow| -> Result<Principal, UnknownStoredValue> {
            Ok(Principal { token_id: row.id, tenant_id: row.tenant_id, role: stored("api_tokens.role", &row.role)? })
        };
        Ok(row.map(principal).transpose()?)
    }

    /// Whether `verification` of the token `hash` began after everything this process was told
    /// changed about the token: only then may it be honoured.
    async fn is_current(&self, hash: &[u8; 32], verification: Verification) -> bool {
        if verification.looked_up_at <= self.every_token_forgotten_at.load(Ordering::Acquire) {
            return false;
        }
        let until = self.changed_until.load(Ordering::Acquire);
        if until == 0 || self.now() >= until {
            return true;
        }
        self.changed.get(hash).await.is_none_or(|changed_at| verification.looked_up_at > changed_at)
    }

    /// Forgets every cached verification, and what a lookup still running may store: the next
    /// request of each token asks Postgres.
    pub fn forget_every_token(&self) {
        self.every_token_forgotten_at.fetch_max(self.now(), Ordering::Release);
        self.cache.invalidate_all();
    }

    /// Forgets a token in this process at once (after it was revoked or changed here or
    /// elsewhere, and the change committed), including what a lookup still running may store
    /// for it: the next request of the token asks Postgres.
    pub async fn forget(&self, hash: &[u8]) {
        if let Ok(hash) = <[u8; 32]>::try_from(hash) {
            let now = self.now();
            self.changed.insert(hash, now).await;
            self.changed_until.fetch_max(now.saturating_add(nanos(self.changed_for)), Ordering::Release);
            self.cache.invalidate(&hash).await;
        }
    }

    /// Nanoseconds since this verifier's epoch (at least 1: 0 stands for never).
    fn now(&self) -> u64 {
        nanos(self.epoch.elapsed()).max(1)
    }
}

/// `duration` in whole nanoseconds (saturating: 584 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The answer to a token that is unknown, revoked, or of a deleted tenant.
fn unknown_or_revoked() -> ApiError {
    ApiError::unauthorized("the bearer token is unknown or revoked")
}

/// Creates a token for `tenant` and returns its id and secret (shown once).
pub async fn create_token(
    db: &impl ConnectionTrait,
    tenant: Uuid,
    role: Role,
    name: &str,
) -> Result<(Uuid, String), DbErr> {
    use sea_orm::{ActiveModelTrait, Set};

    use crate::db::entities::api_tokens;

    let (token, hash) = generate_token();
    let model = api_tokens::ActiveModel {
        id: Set(Uuid::new_v4()),
        tenant_id: Set(tenant),
        name: Set(name.to_owned()),
        token_hash: Set(hash.to_vec()),
        role: Set(enum_text(&role)),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok((model.id, token))
}

/// Revokes a token (of `tenant` when given). Returns its hash when a live token was revoked.
pub async fn revoke_token(db: &impl ConnectionTrait, id: Uuid, tenant: Option<Uuid>) -> Result<Option<Vec<u8>>, DbErr> {
    #[derive(FromQueryResult)]
    struct Revoked {
        token_hash: Vec<u8>,
    }
    let revoked = Revoked::find_by_statement(stmt(
        "UPDATE api_tokens SET revoked_at = now() \
         WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) AND revoked_at IS NULL RETURNING token_hash",
        [id.into(), tenant.into()],
    ))
    .one(db)
    .await?;
    Ok(revoked.map(|row| row.token_hash))
}

#[cfg(test)]
mod tests {
    use openrisk_test_support::TestDatabase;

    use super::*;

    /// A verifier trusting for a minute, on a new database holding one analyst token.
    async fn analyst() -> (TestDatabase, TokenVerifier, String, [u8; 32]) {
        let db = TestDatabase::create().await;
        let conn = sea_orm::Database::connect(&db.url).await.unwrap();
        let tenant = Uuid::new_v4();
        conn.execute_unprepared(&format!("INSERT INTO tenants (id, slug, name) VALUES ('{tenant}', 'acme', 'Acme')"))
            .await
            .unwrap();
        let (_, token) = create_token(&conn, tenant, Role::Analyst, "ci").await.unwrap();
        let verifier = TokenVerifier::new(conn, Duration::from_secs(60), Duration::from_secs(20), 1, Arc::default());
        let hash = hash_token(&token);
        (db, verifier, token, hash)
    }

    /// Stores what a lookup that began at `began` (before a change was heard) found.
    async fn stored_late(verifier: &TokenVerifier, hash: [u8; 32], principal: Principal, began: u64) {
        verifier.cache.insert(hash, Verification { principal: Some(principal), looked_up_at: began }).await;
    }

    #[tokio::test]
    async fn a_token_changed_anywhere_is_looked_up_again_even_when_a_lookup_from_before_stores_it_after() {
        let (db, verifier, token, hash) = analyst().await;
        let analyst = verifier.verify(&token).await.unwrap();
        assert_eq!(analyst.role, Role::Analyst);
        let began = verifier.now();
        db.connect().await.batch_execute("UPDATE api_tokens SET role = 'viewer'").await.unwrap();
        verifier.forget(&hash).await;
        stored_late(&verifier, hash, analyst, began).await;
        assert_eq!(verifier.verify(&token).await.unwrap().role, Role::Viewer, "looked up again");
        assert_eq!(verifier.verify(&token).await.unwrap().role, Role::Viewer, "then trusted");

        let began = verifier.now();
        revoke_token(&verifier.db, analyst.token_id, None).await.unwrap();
        verifier.forget(&hash).await;
        stored_late(&verifier, hash, analyst, began).await;
        assert!(matches!(verifier.verify(&token).await, Err(ApiError::Unauthorized(..))), "revoked");
    }

    #[tokio::test]
    async fn forgetting_every_token_also_forgets_what_a_lookup_from_before_stores_after() {
        let (db, verifier, token, hash) = analyst().await;
        let analyst = verifier.verify(&token).await.unwrap();
        let began = verifier.now();
        db.connect().await.batch_execute("DELETE FROM api_tokens").await.unwrap();
        verifier.forget_every_token();
        stored_late(&verifier, hash, analyst, began).await;
        assert!(matches!(verifier.verify(&token).await, Err(ApiError::Unauthorized(..))));
    }
}
