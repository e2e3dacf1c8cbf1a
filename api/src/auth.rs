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
use moka::ops::compute::Op;
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

/// How many lookups one request waits for: the first may be one that began before a change the
/// request must see, the second began after the request did.
const LOOKUP_ROUNDS: usize = 2;

/// How many change times [`TokenVerifier`] keeps: tokens whose hashes share a slot share its
/// time, which costs one of them a lookup and never loses a change, in a fixed 32 KiB however
/// many announcements arrive.
const CHANGE_SLOTS: usize = 4096;

/// Verifies bearer tokens against Postgres through a short-lived in-process cache.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    db: DatabaseConnection,
    cache: MokaCache<[u8; 32], Verification>,
    /// When a token of each slot ([`slot`]) was last announced changed (ns after `epoch`; 0:
    /// never). A lookup that began before a change committed may store what it read after
    /// [`TokenVerifier::forget`]; no verification that began before its slot's time is honoured.
    changed: Arc<[AtomicU64]>,
    /// When every token was last forgotten (ns after `epoch`), with the same effect on all.
    every_token_forgotten_at: Arc<AtomicU64>,
    epoch: Instant,
    /// Lookups in Postgres that may run at once. Every new well-formed token costs one, so a
    /// client inventing tokens would otherwise take every pooled connection from every tenant;
    /// bounded, it delays only other lookups of tokens not yet cached.
    lookups: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl TokenVerifier {
    /// A verifier whose answers live `ttl`, running at most `lookups_at_once` lookups at once.
    pub fn new(db: DatabaseConnection, ttl: Duration, lookups_at_once: usize, metrics: Arc<Metrics>) -> Self {
        let cache = MokaCache::builder().max_capacity(100_000).time_to_live(ttl).build();
        let changed = (0..CHANGE_SLOTS).map(|_| AtomicU64::new(0)).collect();
        let lookups = Arc::new(Semaphore::new(lookups_at_once.max(1)));
        let (every_token_forgotten_at, epoch) = (Arc::default(), Instant::now());
        Self { db, cache, changed, every_token_forgotten_at, epoch, lookups, metrics }
    }

    /// The principal behind `token`, or 401.
    ///
    /// Answered from a verification whose lookup began after every change of the token heard
    /// before this call. A change heard while the call runs may or may not be seen: the request
    /// overlaps it, and however many announcements arrive meanwhile, none turns the request away.
    pub async fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        if !is_well_formed_token(token) {
            return Err(ApiError::unauthorized("the bearer token is not valid: tokens are `ort_` and 64 hex digits"));
        }
        let hash = hash_token(token);
        let heard = self.last_change_heard(&hash);
        let cached = self.cache.get(&hash).await;
        if let Some(verification) = cached
            && verification.looked_up_at > heard
        {
            self.metrics.auth_cache(true);
            return verification.principal.ok_or_else(unknown_or_revoked);
        }
        self.verify_through_database(hash, heard, cached.is_some()).await
    }

    /// The cache's miss, or a verification from before the change `heard` (`older_seen`): the
    /// token is looked up, once whoever else asks for it meanwhile (a failure too is shared).
    ///
    /// Joining a lookup that began before `heard` yields its older answer; the cache runs one
    /// lookup of a key at a time and stores its answer before anyone waiting sees it, so that
    /// answer is then cached and no older lookup is left running: removing it, the second round
    /// looks up (or joins a lookup) that began after this request did. Boxed, so the hit's future,
    /// which every cached GET carries, stays small.
    fn verify_through_database(
        &self,
        hash: [u8; 32],
        heard: u64,
        mut older_seen: bool,
    ) -> BoxFuture<'_, Result<Principal, ApiError>> {
        async move {
            for _ in 0..LOOKUP_ROUNDS {
                if older_seen {
                    self.remove_if_older(hash, heard).await;
                }
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
                if verification.looked_up_at > heard {
                    self.metrics.auth_cache(!loaded);
                    return verification.principal.ok_or_else(unknown_or_revoked);
                }
                older_seen = true;
            }
            // Not reached while only these lookups store verifications (see above); never an
            // older verification honoured instead.
            Err(ApiError::unavailable("the token could not be verified after a change; retry"))
        }
        .boxed()
    }

    /// Removes the verification of `hash` if its lookup began by `heard`. (A newer one stored by
    /// a lookup that ends between the check and the removal goes too, which costs a lookup.)
    async fn remove_if_older(&self, hash: [u8; 32], heard: u64) {
        self.cache
            .entry(hash)
            .and_compute_with(|entry| {
                let older = entry.is_some_and(|entry| entry.value().looked_up_at <= heard);
                std::future::ready(if older { Op::Remove } else { Op::Nop })
            })
            .await;
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

    /// When a change of the token `hash` (or of every token) was last heard, ns after `epoch`.
    fn last_change_heard(&self, hash: &[u8; 32]) -> u64 {
        let token = self.changed[slot(hash)].load(Ordering::Acquire);
        token.max(self.every_token_forgotten_at.load(Ordering::Acquire))
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
    pub fn forget(&self, hash: &[u8]) {
        if let Ok(hash) = <[u8; 32]>::try_from(hash) {
            self.changed[slot(&hash)].fetch_max(self.now(), Ordering::Release);
        }
    }

    /// Nanoseconds since this verifier's epoch (at least 1: 0 stands for never).
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
    }
}

/// The slot of [`TokenVerifier::changed`] that holds the change time of the token `hash`.
fn slot(hash: &[u8; 32]) -> usize {
    usize::from(u16::from_le_bytes([hash[0], hash[1]])) % CHANGE_SLOTS
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

/// Whether the tenant has the token `id`, not revoked: what a conditional revocation is checked
/// against.
pub async fn token_is_live(db: &impl ConnectionTrait, id: Uuid, tenant: Uuid) -> Result<bool, DbErr> {
    #[derive(FromQueryResult)]
    struct Live {
        live: bool,
    }
    let live = Live::find_by_statement(stmt(
        "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL) AS live",
        [id.into(), tenant.into()],
    ))
    .one(db)
    .await?;
    Ok(live.is_some_and(|row| row.live))
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
        let tenant = crate::seed::create_tenant(&conn, "acme", "Acme").await.unwrap();
        let (_, token) = create_token(&conn, tenant, Role::Analyst, "ci").await.unwrap();
        let verifier = TokenVerifier::new(conn, Duration::from_secs(60), 1, Arc::default());
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
        verifier.forget(&hash);
        stored_late(&verifier, hash, analyst, began).await;
        assert_eq!(verifier.verify(&token).await.unwrap().role, Role::Viewer, "looked up again");
        assert_eq!(verifier.verify(&token).await.unwrap().role, Role::Viewer, "then trusted");

        let began = verifier.now();
        revoke_token(&verifier.db, analyst.token_id, None).await.unwrap();
        verifier.forget(&hash);
        stored_late(&verifier, hash, analyst, began).await;
        assert!(matches!(verifier.verify(&token).await, Err(ApiError::Unauthorized(..))), "revoked");
    }

    #[tokio::test]
    async fn a_request_that_joins_a_lookup_from_before_a_change_waits_for_one_from_after_it() {
        let (db, verifier, token, hash) = analyst().await;
        let analyst = verifier.verify(&token).await.unwrap();
        verifier.forget_every_token();
        // A lookup that began before the change, still running when the change is heard (with
        // the lookups' own error type: the cache only lets lookups of one type join each other).
        let (began, (release, released)) = (verifier.now(), tokio::sync::oneshot::channel::<()>());
        let before = verifier.clone();
        let running = tokio::spawn(async move {
            let lookup = async move {
                released.await.unwrap();
                Ok::<_, LookupError>(Verification { principal: Some(analyst), looked_up_at: began })
            };
            before.cache.try_get_with(hash, lookup).await.unwrap()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        db.connect().await.batch_execute("UPDATE api_tokens SET role = 'viewer'").await.unwrap();
        verifier.forget(&hash);
        let joining = tokio::spawn({
            let verifier = verifier.clone();
            async move { verifier.verify(&token).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(()).unwrap();
        assert_eq!(running.await.unwrap().principal.unwrap().role, Role::Analyst, "the old lookup read the old role");
        assert_eq!(joining.await.unwrap().unwrap().role, Role::Viewer);
    }

    #[tokio::test]
    async fn announcements_heard_while_a_request_runs_never_turn_it_away() {
        let (_db, verifier, token, hash) = analyst().await;
        let announcing = tokio::spawn({
            let verifier = verifier.clone();
            async move {
                loop {
                    verifier.forget(&hash);
                    verifier.forget_every_token();
                    tokio::task::yield_now().await;
                }
            }
        });
        for _ in 0..50 {
            assert_eq!(verifier.verify(&token).await.unwrap().role, Role::Analyst);
        }
        announcing.abort();
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
