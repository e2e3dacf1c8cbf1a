//! A tenant's share of the database pool: how many of its requests may use Postgres at once, so
//! that one tenant's slow work (searches and far pages, which the cache never answers, writes
//! waiting for locks) cannot take every connection from the other tenants.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::error::ApiError;

/// The `Retry-After` of a request refused for want of a place: a place is held for one request,
/// which the request timeout bounds, so a second is a fair first guess.
const RETRY_AFTER_SECS: u64 = 1;

/// Tenants tracked before idle ones are forgotten (and again at twice what is left after).
const FORGET_IDLE_FROM: usize = 1024;

/// The places of each tenant with requests using Postgres.
#[derive(Debug)]
pub struct TenantShares {
    per_tenant: usize,
    wait: Duration,
    tenants: Mutex<Tenants>,
}

#[derive(Debug, Default)]
struct Tenants {
    places: HashMap<Uuid, Arc<Semaphore>>,
    forget_idle_at: usize,
}

impl TenantShares {
    /// `per_tenant` places a tenant; a request waits up to `wait` (the pool's own acquire
    /// timeout) for one.
    pub fn new(per_tenant: u32, wait: Duration) -> Self {
        let tenants = Tenants { places: HashMap::new(), forget_idle_at: FORGET_IDLE_FROM };
        Self { per_tenant: per_tenant.max(1) as usize, wait, tenants: Mutex::new(tenants) }
    }

    /// One of the tenant's places, held until the permit is dropped: 429 when none frees within
    /// the wait. Not 503, which is the whole instance's state: a load balancer that reads 503 as
    /// an unhealthy instance would then take it from every tenant because of one.
    pub async fn enter(&self, tenant: Uuid) -> Result<OwnedSemaphorePermit, ApiError> {
        let places = self.places_of(tenant);
        match tokio::time::timeout(self.wait, places.acquire_owned()).await {
            Ok(Ok(place)) => Ok(place),
            _ => Err(ApiError::too_many_requests(
                "too many of this tenant's requests are using the database at once; retry after Retry-After seconds",
                RETRY_AFTER_SECS,
            )),
        }
    }

    fn places_of(&self, tenant: Uuid) -> Arc<Semaphore> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if tenants.places.len() >= tenants.forget_idle_at {
            // Idle: nothing but this table holds it (a place or a wait for one holds a clone).
            tenants.places.retain(|_, places| Arc::strong_count(places) > 1);
            tenants.forget_idle_at = (tenants.places.len() * 2).max(FORGET_IDLE_FROM);
        }
        let per_tenant = self.per_tenant;
        Arc::clone(tenants.places.entry(tenant).or_insert_with(|| Arc::new(Semaphore::new(per_tenant))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tenant_holding_its_places_waits_and_others_do_not() {
        let shares = TenantShares::new(2, Duration::from_millis(50));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let held = [shares.enter(a).await.unwrap(), shares.enter(a).await.unwrap()];
        assert!(matches!(shares.enter(a).await, Err(ApiError::TooManyRequests(..))), "a third waits, then 429");
        let other = shares.enter(b).await;
        assert!(other.is_ok(), "another tenant has places of its own");
        drop(held);
        assert!(shares.enter(a).await.is_ok(), "a place freed is taken again");
    }

    #[tokio::test]
    async fn idle_tenants_are_forgotten_and_busy_ones_kept() {
        let shares = TenantShares::new(1, Duration::from_millis(50));
        let busy = Uuid::new_v4();
        let place = shares.enter(busy).await.unwrap();
        for _ in 0..FORGET_IDLE_FROM {
            drop(shares.enter(Uuid::new_v4()).await.unwrap());
        }
        let tenants = shares.tenants.lock().unwrap();
        assert!(tenants.places.len() <= 2, "{} tenants tracked", tenants.places.len());
        assert!(tenants.places.contains_key(&busy));
        drop(place);
    }
}
