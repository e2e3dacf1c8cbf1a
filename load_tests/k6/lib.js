// Shared pieces of the k6 scripts: configuration from the environment, the risk ids of the
// token's tenant, a Zipf sampler, and cache metrics read from the `Cache-Status` header
// (RFC 9211), so the hit rate is hits / all cacheable answers, computed per response.
import http from 'k6/http';
import { check, fail } from 'k6';
import { Rate, Trend } from 'k6/metrics';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
export const TOKEN = __ENV.TOKEN || '';
export const RATE = Number(__ENV.RATE || 2000);
export const DURATION = __ENV.DURATION || '2m';
export const VUS = Number(__ENV.VUS || 64);
export const MAX_VUS = Number(__ENV.MAX_VUS || 400);
export const RISKS = Number(__ENV.RISKS || 2000);
// AIM=1 adds this project's own aims (p99 < 5 ms, hit rate ≥ 95 %) to the old system's targets.
export const AIM = __ENV.AIM === '1';

export const cacheHits = new Rate('cache_hits');
export const hitDuration = new Trend('cache_hit_duration', true);
export const missDuration = new Trend('cache_miss_duration', true);

export function params(name, extra) {
  const headers = Object.assign({ Authorization: `Bearer ${TOKEN}` }, (extra && extra.headers) || {});
  return Object.assign({}, extra || {}, { headers, tags: Object.assign({ name }, (extra && extra.tags) || {}) });
}

// Records how a cacheable GET was served; returns 'hit', 'miss', 'bypass' or 'other' (no
// Cache-Status). A bypass (Redis skipped, failed or over the tenant's budget) is an answer the
// cache did not serve, so it counts against the hit rate like a miss.
export function recordCache(res, tags) {
  const status = String(res.headers['Cache-Status'] || '');
  let kind = 'other';
  if (status === 'openrisk; hit') kind = 'hit';
  else if (status.indexOf('fwd=miss') >= 0) kind = 'miss';
  else if (status.indexOf('fwd=bypass') >= 0) kind = 'bypass';
  if (res.status === 200 && kind !== 'other') {
    cacheHits.add(kind === 'hit', tags);
    if (kind !== 'bypass') (kind === 'hit' ? hitDuration : missDuration).add(res.timings.duration, tags);
  }
  return kind;
}

// The ids of up to RISKS live risks of the token's tenant, newest first.
export function loadRiskIds() {
  if (!TOKEN) fail('set TOKEN to a bearer token of the tenant under test (openrisk-api token create ...)');
  const ids = [];
  for (let page = 1; ids.length < RISKS; page++) {
    const res = http.get(`${BASE_URL}/api/v1/risks?sort_by=created_at&sort_dir=desc&page=${page}&limit=200`, params('setup'));
    if (!check(res, { 'setup: risk list answered 200': (r) => r.status === 200 })) fail(`GET /api/v1/risks: ${res.status} ${res.body}`);
    const items = res.json('items') || [];
    for (const item of items) ids.push(item.id);
    if (items.length < 200) break;
  }
  if (ids.length === 0) fail('the tenant has no risks: seed some first (openrisk-api seed)');
  return ids.slice(0, RISKS);
}

// Zipf(s) over n ranks: returns a sampler of 0-based ranks (rank 0 is the most popular).
export function zipf(n, s) {
  const cdf = new Array(n);
  let sum = 0;
  for (let k = 1; k <= n; k++) {
    sum += 1 / Math.pow(k, s);
    cdf[k - 1] = sum;
  }
  return () => {
    const u = Math.random() * sum;
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid] < u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
}

// The dashboard's list and stats queries.
export const LIST_QUERIES = [
  '/api/v1/risks?sort_by=score&sort_dir=desc&page=1&limit=20',
  '/api/v1/risks?sort_by=score&sort_dir=desc&page=2&limit=20',
  '/api/v1/risks?status=ACTIVE&sort_by=updated_at&page=1&limit=20',
  '/api/v1/risks?severity=HIGH&sort_by=score&page=1&limit=50',
  '/api/v1/risks?page=1&limit=20',
];
export const STATS_QUERIES = ['/api/v1/stats', '/api/v1/stats/risk-matrix', '/api/v1/stats/trends?days=30'];

// The old system's targets (avg 15 ms, P95 45 ms, P99 100 ms, 2000 req/s, hit rate > 75 %), and
// with AIM=1 this project's (p99 < 5 ms, hit rate ≥ 95 %). Errors fail the run in both.
export function readThresholds(rate) {
  const duration = ['avg<15', 'p(95)<45', 'p(99)<100'];
  const hits = ['rate>0.75'];
  if (AIM) {
    duration.push('p(99)<5');
    hits.push('rate>=0.95');
  }
  return {
    'http_req_duration{kind:read}': duration,
    http_req_failed: ['rate<0.001'],
    cache_hits: hits,
    // A constant-arrival-rate run drops iterations when the system cannot keep up: the rate
    // target is met only if (almost) none were dropped.
    dropped_iterations: [`count<${Math.max(1, Math.floor(rate * 0.01))}`],
    checks: ['rate>0.999'],
  };
}
