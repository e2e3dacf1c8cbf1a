//! A small HTTP/1.1 load generator on hyper's connection API: one task per keep-alive connection,
//! one request in flight per connection (like wrk and oha).
//!
//! * [`closed_loop`] sends the next request as soon as the previous answer arrived: it measures
//!   saturation throughput. Its latencies are service times, not what users would see at a rate.
//! * [`open_loop`] offers a fixed rate: connection `i` of `c` has its own schedule, one request
//!   every `c / rate` seconds, offset by `i / rate` (wrk2's model). When an answer arrives after
//!   the next request was due, that request is sent at once and its latency counts **from when it
//!   was due** (the coordinated-omission correction), so a stalled server cannot hide its stall by
//!   slowing the generator down. When the generator is on time, latency counts from the actual
//!   send, so the 1 ms resolution of tokio's timer does not inflate the numbers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use openrisk_shared::CacheStatus;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::error::Elapsed;

use super::zipf::Sampler;

/// One request to send: method, path with query, `Authorization` value and JSON body.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub auth: Option<Arc<str>>,
    pub body: Option<Bytes>,
}

impl Req {
    pub fn get(path: impl Into<String>, auth: Option<Arc<str>>) -> Self {
        Self { method: Method::GET, path: path.into(), auth, body: None }
    }
}

/// An answer: status, the `Cache-Status` header (when it holds a known value) and the body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub cache_status: Option<CacheStatus>,
    pub body: Bytes,
}

/// The longest a connection may take to open, and a request from waiting for its connection to
/// the answer's last byte. Far above any answer of a working server (milliseconds), so that only
/// one that stopped answering reaches it: the request then counts as a transport error, and the
/// run goes on instead of hanging.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    addr: SocketAddr,
    host: String,
    sender: http1::SendRequest<Full<Bytes>>,
    /// How long a request may take: [`REQUEST_TIMEOUT`] (shorter in tests).
    timeout: Duration,
}

impl Conn {
    /// Connects to `addr`, within [`REQUEST_TIMEOUT`].
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        tokio::time::timeout(REQUEST_TIMEOUT, Self::connect(addr))
            .await
            .with_context(|| format!("no connection to {addr} within {REQUEST_TIMEOUT:?}"))?
    }

    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { addr, host: addr.to_string(), sender, timeout: REQUEST_TIMEOUT })
    }

    /// Sends `req` and reads the whole answer, within [`REQUEST_TIMEOUT`].
    pub async fn send(&mut self, req: &Req) -> anyhow::Result<Answer> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.exchange(req))
            .await
            .with_context(|| format!("{} {}: no answer within {timeout:?}", req.method, req.path))?
    }

    async fn exchange(&mut self, req: &Req) -> anyhow::Result<Answer> {
        self.sender.ready().await?;
        let mut builder = hyper::Request::builder().method(req.method.clone()).uri(&req.path).header(HOST, &self.host);
        if let Some(auth) = &req.auth {
            builder = builder.header(AUTHORIZATION, &**auth);
        }
        if req.body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder.body(Full::new(req.body.clone().unwrap_or_default()))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let cache_status =
            response.headers().get("cache-status").and_then(|value| value.to_str().ok()).and_then(CacheStatus::parse);
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer { status, cache_status, body })
    }

    /// Sends `req`, reconnecting once if the connection broke. A request that timed out is not
    /// sent again (a retry would hide it as a late success); the connection, which still waits
    /// for its answer, is replaced for the next one.
    pub async fn send_retrying(&mut self, req: &Req) -> anyhow::Result<Answer> {
        match self.send(req).await {
            Ok(answer) => Ok(answer),
            Err(error) if error.downcast_ref::<Elapsed>().is_some() => {
                *self = Conn::open(self.addr).await?;
                Err(error)
            }
            Err(_) => {
                *self = Conn::open(self.addr).await?;
                self.send(req).await
            }
        }
    }
}

/// Requests to draw from, and how. Remembers which requests were ever sent, so a run can tell
/// first-time requests (compulsory cache misses) from repeats.
pub struct Workload {
    pub name: String,
    pub reqs: Vec<Req>,
    pub sampler: Sampler,
    seen: Vec<AtomicBool>,
}

impl Workload {
    pub fn new(name: impl Into<String>, reqs: Vec<Req>, sampler: Sampler) -> Arc<Self> {
        assert!(!reqs.is_empty(), "a workload needs requests");
        let seen = reqs.iter().map(|_| AtomicBool::new(false)).collect();
        Arc::new(Self { name: name.into(), reqs, sampler, seen })
    }

    /// Every request of `reqs` equally often.
    pub fn uniform(name: impl Into<String>, reqs: &[Req]) -> Arc<Self> {
        Self::new(name, reqs.to_vec(), Sampler::Uniform(reqs.len()))
    }

    /// Marks requests as already sent (e.g. by a warm-up outside this workload).
    pub fn mark_seen(&self, indexes: impl IntoIterator<Item = usize>) {
        for index in indexes {
            if let Some(flag) = self.seen.get(index) {
                flag.store(true, Ordering::Relaxed);
            }
        }
    }

    /// A request, and whether this is the first time any run of this workload sends it.
    fn pick(&self, rng: &mut SmallRng) -> (&Req, bool) {
        let index = self.sampler.sample(rng).min(self.reqs.len() - 1);
        (&self.reqs[index], !self.seen[index].swap(true, Ordering::Relaxed))
    }
}

/// Latencies are recorded in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The `quantile` of a histogram of [`new_histogram`]'s microseconds, in milliseconds.
pub fn quantile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1_000.0
}

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub name: String,
    /// `closed` (saturation) or `open` (fixed rate).
    pub mode: &'static str,
    pub connections: usize,
    pub offered_rate: Option<f64>,
    pub elapsed: Duration,
    /// The answers of every connection, added up.
    pub tally: Tally,
}

impl RunResult {
    pub fn throughput(&self) -> f64 {
        self.tally.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Percentile `p` (0–100) of the user-visible latency, in milliseconds.
    pub fn ms(&self, p: f64) -> f64 {
        self.tally.latency.value_at_percentile(p) as f64 / 1000.0
    }

    pub fn summary(&self) -> Value {
        let hist = |h: &Histogram<u64>| {
            json!({
                "mean_ms": h.mean() / 1000.0,
                "p50_ms": h.value_at_percentile(50.0) as f64 / 1000.0,
                "p90_ms": h.value_at_percentile(90.0) as f64 / 1000.0,
                "p95_ms": h.value_at_percentile(95.0) as f64 / 1000.0,
                "p99_ms": h.value_at_percentile(99.0) as f64 / 1000.0,
                "p999_ms": h.value_at_percentile(99.9) as f64 / 1000.0,
                "max_ms": h.max() as f64 / 1000.0,
            })
        };
        let tally = &self.tally;
        json!({
            "name": self.name,
            "mode": self.mode,
            "connections": self.connections,
            "offered_rate": self.offered_rate,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "ok": tally.ok,
            "non_2xx": tally.non_2xx,
            "errors": tally.errors,
            "first_time_requests": tally.first_time,
            "cache_status": tally.cache,
            "throughput_rps": self.throughput(),
            "latency": hist(&tally.latency),
            "service_time": hist(&tally.service),
        })
    }

    /// A run that answered nothing yet: the start of `merge`, and the result of a phase
    /// without read load.
    pub fn empty(
        name: &str,
        mode: &'static str,
        connections: usize,
        offered_rate: Option<f64>,
        elapsed: Duration,
    ) -> Self {
        RunResult { name: name.to_owned(), mode, connections, offered_rate, elapsed, tally: Tally::new() }
    }

    /// The run of `tallies`, one per connection.
    fn merge(
        name: &str,
        mode: &'static str,
        offered_rate: Option<f64>,
        elapsed: Duration,
        tallies: Vec<Tally>,
    ) -> Self {
        let mut result = RunResult::empty(name, mode, tallies.len(), offered_rate, elapsed);
        for tally in &tallies {
            result.tally.add(tally);
        }
        result
    }
}

/// How the requests of one connection, or of a whole run, were answered.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Answers with status 2xx or 304.
    pub ok: u64,
    pub non_2xx: u64,
    /// Transport errors (connect, reset, or no answer within [`REQUEST_TIMEOUT`]).
    pub errors: u64,
    /// Requests sent for the first time by any run of the workload.
    pub first_time: u64,
    /// How the cache served the answers counted in `ok`, from their `Cache-Status`.
    pub cache: CacheCounts,
    /// Latency as users see it (corrected for coordinated omission in `open` mode), µs.
    pub latency: Histogram<u64>,
    /// Time from the actual send to the answer, µs.
    pub service: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            first_time: 0,
            ok: 0,
            non_2xx: 0,
            errors: 0,
            cache: CacheCounts::default(),
            latency: new_histogram(),
            service: new_histogram(),
        }
    }

    /// Adds `other`'s answers to these (the connections of a run, or runs of one target).
    pub fn add(&mut self, other: &Tally) {
        self.first_time += other.first_time;
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.cache.add(&other.cache);
        self.latency.add(&other.latency).expect("same bounds");
        self.service.add(&other.service).expect("same bounds");
    }

    fn record(&mut self, outcome: &anyhow::Result<Answer>, from: Instant, sent: Instant, done: Instant) {
        match outcome {
            Ok(answer) if (200..300).contains(&answer.status) || answer.status == 304 => {
                self.ok += 1;
                self.cache.record(answer.cache_status);
                self.latency.saturating_record(micros(done - from));
                self.service.saturating_record(micros(done - sent));
            }
            Ok(_) => self.non_2xx += 1,
            Err(_) => self.errors += 1,
        }
    }
}

/// How the cache served a run's successful answers, by their `Cache-Status` header: a cached
/// target whose answers are not hits measures Postgres, not the cache, whatever its throughput.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheCounts {
    pub hit: u64,
    /// Looked up, not found, read from Postgres ([`CacheStatus::is_miss`]).
    pub miss: u64,
    /// Redis skipped or failed ([`CacheStatus::is_bypass`]).
    pub bypass: u64,
    /// No `Cache-Status`, or a value this build does not know (the ceiling sends none).
    pub other: u64,
}

impl CacheCounts {
    fn record(&mut self, status: Option<CacheStatus>) {
        match status {
            Some(status) if status.is_hit() => self.hit += 1,
            Some(status) if status.is_miss() => self.miss += 1,
            Some(status) if status.is_bypass() => self.bypass += 1,
            _ => self.other += 1,
        }
    }

    fn add(&mut self, other: &CacheCounts) {
        self.hit += other.hit;
        self.miss += other.miss;
        self.bypass += other.bypass;
        self.other += other.other;
    }
}

/// `duration` as a value for [`new_histogram`]: whole microseconds, at least its lowest (1 µs).
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Saturation: `connections` connections, each sending its next request as soon as it can.
pub async fn closed_loop(
    addr: SocketAddr,
    workload: Arc<Workload>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<RunResult> {
    closed_loop_across(&[addr], workload, connections, duration).await
}

/// Saturation spread over several servers: connection `i` goes to `addrs[i % addrs.len()]`.
pub async fn closed_loop_across(
    addrs: &[SocketAddr],
    workload: Arc<Workload>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<RunResult> {
    let conns = connect_all(addrs, connections).await?;
    let started = Instant::now();
    let deadline = started + duration;
    let tallies = on_each_connection(conns, |index, mut conn| {
        let workload = Arc::clone(&workload);
        async move {
            let mut rng = SmallRng::seed_from_u64(index as u64 * 7919 + 1);
            let mut tally = Tally::new();
            while Instant::now() < deadline {
                let (req, first) = workload.pick(&mut rng);
                tally.first_time += u64::from(first);
                let sent = Instant::now();
                let outcome = conn.send_retrying(req).await;
                tally.record(&outcome, sent, sent, Instant::now());
            }
            tally
        }
    })
    .await?;
    Ok(RunResult::merge(&workload.name, "closed", None, started.elapsed(), tallies))
}

/// Opens `connections` connections, spread over `addrs` in turn.
async fn connect_all(addrs: &[SocketAddr], connections: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(connections);
    for index in 0..connections {
        conns.push(Conn::open(addrs[index % addrs.len()]).await?);
    }
    Ok(conns)
}

/// Runs `drive` on each connection (with its index) in a task of its own; the tasks' tallies.
async fn on_each_connection<F, Fut>(conns: Vec<Conn>, drive: F) -> anyhow::Result<Vec<Tally>>
where
    F: Fn(usize, Conn) -> Fut,
    Fut: Future<Output = Tally> + Send + 'static,
{
    let tasks: Vec<_> = conns.into_iter().enumerate().map(|(index, conn)| tokio::spawn(drive(index, conn))).collect();
    Ok(futures::future::try_join_all(tasks).await?)
}

/// Fixed offered rate over `connections` connections, corrected for coordinated omission.
pub async fn open_loop(
    addr: SocketAddr,
    workload: Arc<Workload>,
    connections: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<RunResult> {
    let conns = connect_all(&[addr], connections).await?;
    let started = Instant::now();
    let deadline = started + duration;
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let tallies = on_each_connection(conns, |index, mut conn| {
        let workload = Arc::clone(&workload);
        async move {
            let mut rng = SmallRng::seed_from_u64(index as u64 * 104_729 + 3);
            let mut tally = Tally::new();
            let mut due = started + Duration::from_secs_f64(index as f64 / rate);
            let mut previous_done = started;
            while due < deadline {
                if Instant::now() < due {
                    tokio::time::sleep_until(due.into()).await;
                }
                let sent = Instant::now();
                // Behind schedule because the previous answer came late: count from when
                // this request was due. On time: count from the send.
                let from = if previous_done > due { due } else { sent };
                let (req, first) = workload.pick(&mut rng);
                tally.first_time += u64::from(first);
                let outcome = conn.send_retrying(req).await;
                let done = Instant::now();
                tally.record(&outcome, from, sent, done);
                previous_done = done;
                due += interval;
            }
            tally
        }
    })
    .await?;
    let elapsed = started.elapsed().max(duration);
    Ok(RunResult::merge(&workload.name, "open", Some(rate), elapsed, tallies))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `app` on a free loopback port until the handle is aborted.
    async fn serve(app: poem::Route) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let server = tokio::spawn(poem::Server::new(poem::listener::TcpListener::bind(addr)).run(app));
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (addr, server)
    }

    #[tokio::test]
    async fn both_loops_count_every_answer_of_a_local_server() {
        let (addr, server) = serve(poem::Route::new().at("/x", poem::endpoint::make_sync(|_| "hello"))).await;
        let workload = Workload::new("x", vec![Req::get("/x", None), Req::get("/missing", None)], Sampler::Uniform(2));
        let closed = closed_loop(addr, Arc::clone(&workload), 2, Duration::from_millis(200)).await.unwrap();
        let closed = closed.tally;
        assert!(closed.ok > 0 && closed.non_2xx > 0 && closed.errors == 0);
        assert_eq!(closed.latency.len(), closed.ok);
        let open = open_loop(addr, workload, 2, 200.0, Duration::from_millis(300)).await.unwrap();
        // 200/s for 0.3 s over two connections: 60 requests are due, each is sent once.
        let open = open.tally;
        assert_eq!(open.ok + open.non_2xx + open.errors, 60);
        server.abort();
    }

    #[tokio::test]
    async fn a_request_the_server_never_answers_times_out_once_and_counts_as_a_transport_error() {
        // Connections complete in the listener's backlog; nothing ever reads or answers them.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut conn = Conn::open(silent.local_addr().unwrap()).await.unwrap();
        conn.timeout = Duration::from_millis(50);
        // Not sent again: the replacement connection has the full timeout, and would hang here.
        let outcome = conn.send_retrying(&Req::get("/x", None)).await;
        assert!(outcome.as_ref().is_err_and(|error| error.downcast_ref::<Elapsed>().is_some()), "{outcome:?}");
        let mut tally = Tally::new();
        let now = Instant::now();
        tally.record(&outcome, now, now, now);
        assert_eq!((tally.ok, tally.non_2xx, tally.errors), (0, 0, 1));
    }

    #[tokio::test]
    async fn each_successful_answer_is_counted_by_how_the_cache_served_it() {
        let with = |status: CacheStatus| {
            poem::endpoint::make_sync(move |_| {
                poem::Response::builder().header("cache-status", status.header_value()).body("x")
            })
        };
        let app = poem::Route::new()
            .at("/hit", with(CacheStatus::Hit))
            .at("/miss", with(CacheStatus::Stored))
            .at("/bypass", with(CacheStatus::Disabled))
            .at("/none", poem::endpoint::make_sync(|_| "x"));
        let (addr, server) = serve(app).await;
        let paths = ["/hit", "/miss", "/bypass", "/none", "/missing"];
        let workload = Workload::new("x", paths.map(|path| Req::get(path, None)).to_vec(), Sampler::Uniform(5));
        let tally = open_loop(addr, workload, 1, 500.0, Duration::from_millis(200)).await.unwrap().tally;
        let cache = tally.cache;
        assert!(cache.hit > 0 && cache.miss > 0 && cache.bypass > 0 && cache.other > 0, "{cache:?}");
        assert_eq!(cache.hit + cache.miss + cache.bypass + cache.other, tally.ok, "only answers counted as ok");
        server.abort();
    }
}
