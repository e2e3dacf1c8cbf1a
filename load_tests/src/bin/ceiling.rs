//! The ceiling of the HTTP benchmark: the least a cached GET can cost. A poem server with one
//! route, `GET /ceiling`, answered from one Redis `GET` on a multiplexed connection (the same
//! redis crate and runtime as the API), with the stored bytes as a JSON body. No authentication,
//! no Lua, no version checks: what the API adds on top of this is what the cache costs.
//!
//! A second, `GET /ceiling/list/{n}`, serves the body stored at `<key>:list:<n>` the same way: the
//! benchmark stores there the page each of its list queries returns, so the cached lists have a
//! ceiling with their own bodies, in the same mix of sizes.
//!
//! `GET /ceiling/set/{tenant}/{risk}` serves `<key>:set:<tenant>:<risk>` the same way: one `GET`
//! of a body per hot risk, so the ceiling reads a working set as large as the cached API's (Redis
//! finds one hot key in its CPU caches; a thousand of them, not).
//!
//! A fourth, `GET /lookup/{tenant}/{risk}`, answers a risk detail the API cached through the real
//! consistency protocol (`openrisk_shared::protocol::lookup`, the version-checking `MGET`) and
//! nothing else, so the benchmark can split the API's cost into "the protocol's Redis round trip"
//! and "everything the API adds" (auth, routing, metrics, headers).
//!
//! ```sh
//! ceiling --addr 127.0.0.1:18090 --redis-url redis://127.0.0.1:6379 --key bench:ceiling --key-prefix bench
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use openrisk_shared::protocol::{self, Lookup};
use openrisk_shared::{Keyspace, Tag};
use poem::http::StatusCode;
use poem::web::{Data, Path};
use poem::{EndpointExt, Response, Route, Server, get, handler};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(about = "Minimal poem server answering GET /ceiling (and /ceiling/list/{n}) from one Redis GET")]
struct Args {
    #[arg(long, env = "CEILING_ADDR", default_value = "127.0.0.1:18090")]
    addr: SocketAddr,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Redis key holding the body to serve (the benchmark stores a real risk detail there, a
    /// real list page per list query at `<key>:list:<n>`, and a detail's body per hot risk at
    /// `<key>:set:…`).
    #[arg(long, default_value = "bench:ceiling")]
    key: String,
    /// The API's cache key prefix (`cache.key_prefix`), for `/lookup`.
    #[arg(long, default_value = "or")]
    key_prefix: String,
    /// The API's response schema version (`RESPONSE_SCHEMA_VERSION`), part of its entry keys.
    #[arg(long, default_value_t = openrisk_api::cache::RESPONSE_SCHEMA_VERSION)]
    schema_version: u32,
}

struct State {
    redis: MultiplexedConnection,
    key: String,
    keyspace: Keyspace,
    schema_version: u32,
}

/// Serves the bytes at `key` from one Redis `GET`.
async fn serve(redis: &MultiplexedConnection, key: &str) -> Response {
    let mut redis = redis.clone();
    match redis.get::<_, Option<Vec<u8>>>(key).await {
        Ok(Some(body)) => Response::builder().content_type("application/json; charset=utf-8").body(body),
        Ok(None) => Response::builder().status(StatusCode::NOT_FOUND).finish(),
        Err(_) => Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).finish(),
    }
}

#[handler]
async fn ceiling(state: Data<&Arc<State>>) -> Response {
    serve(&state.redis, &state.key).await
}

#[handler]
async fn ceiling_list(state: Data<&Arc<State>>, Path(page): Path<u32>) -> Response {
    serve(&state.redis, &format!("{}:list:{page}", state.key)).await
}

#[handler]
async fn ceiling_set(state: Data<&Arc<State>>, Path((tenant, risk)): Path<(Uuid, Uuid)>) -> Response {
    serve(&state.redis, &format!("{}:set:{tenant}:{risk}", state.key)).await
}

#[handler]
async fn lookup(state: Data<&Arc<State>>, Path((tenant, risk)): Path<(Uuid, Uuid)>) -> Response {
    let mut redis = state.redis.clone();
    let key = state.keyspace.entry_key(tenant, state.schema_version, "risk", &[("id", risk.to_string())]);
    match protocol::lookup(&mut redis, &state.keyspace, tenant, &key, &[Tag::all(), Tag::risk(risk)]).await {
        Ok(Lookup::Hit(entry)) => Response::builder()
            .content_type("application/json; charset=utf-8")
            .header("ETag", entry.etag)
            .body(entry.body),
        Ok(Lookup::Miss(_)) => Response::builder().status(StatusCode::NOT_FOUND).finish(),
        Err(_) => Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).finish(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = redis::Client::open(args.redis_url.as_str())?;
    let redis = client.get_multiplexed_async_connection().await?;
    let state = Arc::new(State {
        redis,
        key: args.key,
        keyspace: Keyspace::new(args.key_prefix),
        schema_version: args.schema_version,
    });
    let app = Route::new()
        .at("/ceiling", get(ceiling))
        .at("/ceiling/list/:page", get(ceiling_list))
        .at("/ceiling/set/:tenant/:risk", get(ceiling_set))
        .at("/lookup/:tenant/:risk", get(lookup))
        .data(state);
    Server::new(poem::listener::TcpListener::bind(args.addr))
        .run_with_graceful_shutdown(
            app,
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
            None,
        )
        .await?;
    Ok(())
}
