// Read-heavy dashboard mix at a fixed arrival rate (default 2000 req/s, the old system's target):
// 85 % risk details, Zipf-distributed over the tenant's risks, 10 % list queries, 5 % stats.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e TOKEN=... [-e RATE=2000 -e DURATION=2m -e AIM=1] dashboard_mix.js
//
// A constant-arrival-rate executor is open-loop: a slow answer does not slow the offered load
// down, so latencies are not flattered by coordinated omission.
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, DURATION, LIST_QUERIES, MAX_VUS, RATE, STATS_QUERIES, VUS, loadRiskIds, params, readThresholds, recordCache, zipf } from './lib.js';

export const options = {
  scenarios: {
    dashboard: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: VUS,
      maxVUs: MAX_VUS,
    },
  },
  thresholds: Object.assign(readThresholds(RATE), {
    // The throughput target, as achieved request rate.
    'http_reqs{kind:read}': [`rate>${RATE * 0.95}`],
  }),
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'p(99.9)', 'max'],
};

export function setup() {
  const ids = loadRiskIds();
  // Warm the cache the way a running dashboard has: every risk once, lists and stats once.
  for (const id of ids) http.get(`${BASE_URL}/api/v1/risks/${id}`, params('warm-up'));
  for (const path of LIST_QUERIES.concat(STATS_QUERIES)) http.get(`${BASE_URL}${path}`, params('warm-up'));
  return { ids };
}

let pick = null;

export default function (data) {
  if (pick === null) pick = zipf(data.ids.length, 1.0);
  const roll = Math.random();
  let res;
  if (roll < 0.85) {
    res = http.get(`${BASE_URL}/api/v1/risks/${data.ids[pick()]}`, params('GET /risks/{id}', { tags: { kind: 'read' } }));
  } else if (roll < 0.95) {
    const path = LIST_QUERIES[Math.floor(Math.random() * LIST_QUERIES.length)];
    res = http.get(`${BASE_URL}${path}`, params('GET /risks?...', { tags: { kind: 'read' } }));
  } else {
    const path = STATS_QUERIES[Math.floor(Math.random() * STATS_QUERIES.length)];
    res = http.get(`${BASE_URL}${path}`, params('GET /stats...', { tags: { kind: 'read' } }));
  }
  recordCache(res);
  check(res, { 'read answered 200': (r) => r.status === 200 });
}
