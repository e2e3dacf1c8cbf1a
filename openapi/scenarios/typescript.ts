// The client scenario with openapi-fetch over the types openapi-typescript generates
// (`openrisk.d.ts`, written beside this file by openapi/clients.sh). `tsc --noEmit` checks every
// path, parameter and body below against the document before the scenario runs; openapi-fetch
// returns `{ data }` for 2xx and `{ error }` (typed as the operation's error bodies, here `Problem`)
// otherwise, with the raw `response` in both.
import createClient from "openapi-fetch";
import type { components, paths } from "./openrisk.js";

type Problem = components["schemas"]["Problem"];
type Risk = components["schemas"]["Risk"];

const baseUrl = required("SCENARIO_BASE_URL");
const tag = `openapi-typescript-${required("SCENARIO_RUN_ID")}`;
const client = createClient<paths>({
  baseUrl,
  headers: { Authorization: `Bearer ${required("SCENARIO_TOKEN")}` },
});

// Score factor of a HIGH asset (api/src/model.rs, `Criticality`).
const HIGH_CRITICALITY_FACTOR = 1.25;

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function expect(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(what);
}

/** The body of a successful answer; fails the step on an error with the status and the problem. */
function ok<T>(result: { data?: T; error?: unknown; response: Response }): T {
  expect(result.data !== undefined, `status ${result.response.status}: ${JSON.stringify(result.error)}`);
  return result.data;
}

async function step(name: string, run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (error) {
    console.log(`FAIL ${name}: ${error instanceof Error ? error.stack : String(error)}`);
    process.exit(1);
  }
  console.log(`ok   ${name}`);
}

const risks = new Map<string, Risk>();
let alpha!: Risk;
let etag = "";
let mitigationId = "";
let subactionId = "";

await step("create three risks", async () => {
  for (const [name, impact, probability] of [["Alpha", 2, 3], ["Bravo", 3, 3], ["Charlie", 4, 2]] as const) {
    const result = await client.POST("/api/v1/risks", {
      body: {
        title: `${name} ${tag}`,
        impact,
        probability,
        status: "ACTIVE",
        tags: [tag],
        external_id: `${tag}-${name}`,
      },
    });
    const risk = ok(result);
    expect(result.response.status === 201, `status ${result.response.status}`);
    expect(result.response.headers.get("Location") === `/api/v1/risks/${risk.id}`, "Location");
    risks.set(name, risk);
  }
  alpha = risks.get("Alpha")!;
});

await step("list with filters and paging", async () => {
  type Query = NonNullable<paths["/api/v1/risks"]["get"]["parameters"]["query"]>;
  const pageTitles = async (page: number, filters: Query): Promise<string[]> => {
    const result = await client.GET("/api/v1/risks", {
      params: { query: { tag, status: "ACTIVE", limit: 2, page, ...filters } },
    });
    const list = ok(result);
    expect(list.page === page && list.limit === 2, "page and limit echoed");
    expect(result.response.headers.get("Cache-Status")?.startsWith("openrisk;") === true, "Cache-Status");
    return list.items.map((risk) => risk.title.split(" ")[0]);
  };
  const byTitle: Query = { sort_by: "title", sort_dir: "asc" };
  expect((await pageTitles(1, byTitle)).join() === "Alpha,Bravo", "page 1 by title");
  expect((await pageTitles(2, byTitle)).join() === "Charlie", "page 2 by title");
  expect((await pageTitles(1, { min_score: 8.5 })).join() === "Bravo", "min_score 8.5 keeps the 9");
});

await step("get, then 304 with If-None-Match", async () => {
  const first = await client.GET("/api/v1/risks/{id}", { params: { path: { id: alpha.id } } });
  ok(first);
  etag = first.response.headers.get("ETag") ?? "";
  const again = await client.GET("/api/v1/risks/{id}", {
    params: { path: { id: alpha.id }, header: { "If-None-Match": etag } },
  });
  expect(again.response.status === 304, `status ${again.response.status}`);
  expect(again.data === undefined && again.response.headers.get("ETag") === etag, "an empty 304, same ETag");
});

await step("patch (and clear the external id with null)", async () => {
  const changed = ok(
    await client.PATCH("/api/v1/risks/{id}", {
      params: { path: { id: alpha.id } },
      body: { impact: 4, external_id: null },
    }),
  );
  expect(changed.impact === 4 && changed.score === 12, `score ${changed.score}`);
  expect(changed.external_id === undefined, `external_id ${changed.external_id}`);
});

await step("a mitigation and a sub-action", async () => {
  const created = await client.POST("/api/v1/risks/{risk_id}/mitigations", {
    params: { path: { risk_id: alpha.id } },
    body: { title: "Offline backups", status: "IN_PROGRESS", due_date: "2027-03-31" },
  });
  mitigationId = ok(created).id;
  expect(created.response.status === 201, `status ${created.response.status}`);
  const path = { risk_id: alpha.id, mitigation_id: mitigationId };
  const added = ok(
    await client.POST("/api/v1/risks/{risk_id}/mitigations/{mitigation_id}/subactions", {
      params: { path },
      body: { title: "Buy tapes" },
    }),
  );
  expect(!added.completed, "a new sub-action is open");
  const toggled = ok(
    await client.POST("/api/v1/risks/{risk_id}/mitigations/{mitigation_id}/subactions/{id}/toggle", {
      params: { path: { ...path, id: added.id } },
    }),
  );
  expect(toggled.completed, "toggled to completed");
  subactionId = toggled.id;
});

await step("an asset linked to the risk", async () => {
  const asset = ok(
    await client.POST("/api/v1/assets", {
      body: { name: `File server ${tag}`, asset_type: "server", criticality: "HIGH" },
    }),
  );
  // The detail's tag just before the link, which alone must make it stale.
  const before = await client.GET("/api/v1/risks/{id}", { params: { path: { id: alpha.id } } });
  etag = before.response.headers.get("ETag") ?? "";
  const linked = await client.PUT("/api/v1/risks/{risk_id}/assets/{asset_id}", {
    params: { path: { risk_id: alpha.id, asset_id: asset.id } },
  });
  expect(linked.response.status === 204, `status ${linked.response.status}`);
  const result = await client.GET("/api/v1/risks/{id}", {
    params: { path: { id: alpha.id }, header: { "If-None-Match": etag } },
  });
  expect(result.response.status === 200, `the old ETag must not match any more: ${result.response.status}`);
  const detail = ok(result);
  expect(detail.assets.map((embedded) => embedded.id).join() === asset.id, "the asset is embedded");
  expect(detail.score === 12 * HIGH_CRITICALITY_FACTOR, `re-scored: ${detail.score}`);
  const embedded = detail.mitigations.map((m) => [m.id, m.subactions.map((s) => [s.id, s.completed])]);
  const expected = [[mitigationId, [[subactionId, true]]]];
  expect(JSON.stringify(embedded) === JSON.stringify(expected), `mitigations ${JSON.stringify(embedded)}`);
});

await step("the three stats routes", async () => {
  const stats = ok(await client.GET("/api/v1/stats"));
  const counted = Object.values(stats.by_status).reduce((sum, count) => sum + count, 0);
  expect(stats.total_risks >= 3 && counted === stats.total_risks, `stats ${JSON.stringify(stats)}`);
  const matrix = ok(await client.GET("/api/v1/stats/risk-matrix"));
  expect(matrix.counts.length === 5 && matrix.counts.every((row) => row.length === 5), "a 5 × 5 matrix");
  const cells = matrix.counts.flat().reduce((sum, count) => sum + count, 0);
  expect(cells === matrix.total && matrix.total === stats.total_risks, "matrix total");
  expect(matrix.counts[4 - 1][3 - 1] >= 1, "Alpha counts at impact 4, probability 3");
  const trends = ok(await client.GET("/api/v1/stats/trends", { params: { query: { days: 7 } } }));
  expect(trends.days === 7 && trends.points.length === 7, `${trends.points.length} points`);
  const today = trends.points[trends.points.length - 1];
  expect(today.day === new Date().toISOString().slice(0, 10), `last day ${today.day}`);
  expect(today.created >= 3, `${today.created} created today`);
});

await step("delete, then a problem+json 404 read as a Problem", async () => {
  const charlie = risks.get("Charlie")!;
  const deleted = await client.DELETE("/api/v1/risks/{id}", { params: { path: { id: charlie.id } } });
  expect(deleted.response.status === 204, `status ${deleted.response.status}`);
  const gone = await client.GET("/api/v1/risks/{id}", { params: { path: { id: charlie.id } } });
  expect(gone.response.status === 404, `status ${gone.response.status}`);
  const type = gone.response.headers.get("Content-Type") ?? "";
  expect(type.startsWith("application/problem+json"), type);
  // The declared type of `error` is the operation's error body: this assignment checks it.
  const problem: Problem | undefined = gone.error;
  expect(problem?.status === 404 && problem.detail.includes(charlie.id), `problem ${JSON.stringify(problem)}`);
});
