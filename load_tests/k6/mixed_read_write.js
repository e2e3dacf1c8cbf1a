// Mixed reads and writes: the dashboard read mix at a fixed rate while analysts change risks.
// Each write (PATCH /risks/{id} with a new title) is followed by a read of the same risk by the
// same client, which must return the new title (read-your-writes: the API invalidates what a
// write touched before it answers). How long *other* clients may see the old value (the
// invalidation lag) is measured by load_tests/bench.sh, which can commit through SQL too.
// TOKEN must be an analyst's (writes need the analyst role).
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e TOKEN=... [-e RATE=1500 -e WRITE_RATE=50 -e DURATION=2m] mixed_read_write.js
import http from 'k6/http';
import { check } from 'k6';
import { Trend } from 'k6/metrics';
import { BASE_URL, DURATION, LIST_QUERIES, MAX_VUS, RATE, VUS, loadRiskIds, params, readThresholds, recordCache, zipf } from './lib.js';

const WRITE_RATE = Number(__ENV.WRITE_RATE || 50);
const writeDuration = new Trend('write_duration', true);

const reads = readThresholds(RATE);
// Writes invalidate lists and stats of the tenant: hits drop, the old target (75 %) still holds.
reads.cache_hits = ['rate>0.75'];

export const options = {
  scenarios: {
    readers: {
      executor: 'constant-arrival-rate',
      exec: 'read',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: VUS,
      maxVUs: MAX_VUS,
    },
    writers: {
      executor: 'constant-arrival-rate',
      exec: 'write',
      rate: WRITE_RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 8,
      maxVUs: 64,
    },
  },
  thresholds: Object.assign(reads, {
    write_duration: ['p(95)<100', 'p(99)<250'],
    'checks{check:read_your_write}': ['rate==1'],
  }),
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  return { ids: loadRiskIds() };
}

let pick = null;

export function read(data) {
  if (pick === null) pick = zipf(data.ids.length, 1.0);
  let res;
  if (Math.random() < 0.9) {
    res = http.get(`${BASE_URL}/api/v1/risks/${data.ids[pick()]}`, params('GET /risks/{id}', { tags: { kind: 'read' } }));
  } else {
    const path = LIST_QUERIES[Math.floor(Math.random() * LIST_QUERIES.length)];
    res = http.get(`${BASE_URL}${path}`, params('GET /risks?...', { tags: { kind: 'read' } }));
  }
  recordCache(res);
  check(res, { 'read answered 200': (r) => r.status === 200 });
}

let writes = 0;

export function write(data) {
  // Writers touch the popular risks too, so the writes hit cached entries.
  if (pick === null) pick = zipf(data.ids.length, 1.0);
  const id = data.ids[pick()];
  writes += 1;
  const title = `k6 write ${Date.now()}-${__VU}-${writes}`;
  const res = http.patch(`${BASE_URL}/api/v1/risks/${id}`, JSON.stringify({ title }), params('PATCH /risks/{id}', { headers: { 'Content-Type': 'application/json' } }));
  writeDuration.add(res.timings.duration);
  check(res, { 'write answered 200': (r) => r.status === 200 });
  const after = http.get(`${BASE_URL}/api/v1/risks/${id}`, params('GET /risks/{id} after write'));
  // k6 tags each check's samples with its name (`check:read_your_write`).
  check(after, { read_your_write: (r) => r.status === 200 && r.json('title') === title });
}
