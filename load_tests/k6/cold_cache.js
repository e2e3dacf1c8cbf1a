// Cold cache: every risk of the tenant is read once (each first read is a miss that goes to
// Postgres and fills the cache), then once more (each must now be a hit). Measures the miss path
// on its own (`http_req_duration{phase:cold}`, `cache_miss_duration`) and checks that fills are
// stored (`cache_hits{phase:rewarm}`). Run it against a cache that does not hold the tenant yet
// (a new tenant, or a new key prefix after a deploy); otherwise `cache_hits{phase:cold}` shows
// how warm the first pass already was.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e TOKEN=... [-e RISKS=2000 -e VUS=32] cold_cache.js
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { BASE_URL, RISKS, VUS, loadRiskIds, params, recordCache } from './lib.js';

export const options = {
  scenarios: {
    // Iterations 0..n-1 read each risk for the first time, n..2n-1 read them again; with VUS
    // in flight at once, the second read of a risk comes long after its first.
    passes: {
      executor: 'shared-iterations',
      vus: VUS,
      iterations: 2 * RISKS,
      maxDuration: '10m',
    },
  },
  thresholds: {
    // Even a miss (Postgres read, serialisation, fill) meets the old system's cached targets.
    'http_req_duration{phase:cold}': ['avg<15', 'p(95)<45', 'p(99)<100'],
    // The first pass really was cold (at least 90 % misses) ...
    'cache_hits{phase:cold}': ['rate<0.1'],
    // ... and every second read is a hit: fills are stored.
    'cache_hits{phase:rewarm}': ['rate>0.99'],
    'http_req_duration{phase:rewarm}': ['avg<15', 'p(95)<45', 'p(99)<100'],
    http_req_failed: ['rate<0.001'],
    checks: ['rate>0.999'],
  },
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  return { ids: loadRiskIds() };
}

export default function (data) {
  const n = data.ids.length;
  const i = exec.scenario.iterationInTest;
  if (i >= 2 * n) return;
  const phase = i < n ? 'cold' : 'rewarm';
  const res = http.get(`${BASE_URL}/api/v1/risks/${data.ids[i % n]}`, params('GET /risks/{id}', { tags: { phase } }));
  recordCache(res, { phase });
  check(res, { 'risk answered 200': (r) => r.status === 200 });
}
