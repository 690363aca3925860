// The status page in a real browser (Debian's Chromium, headless, driven by
// playwright-core). It starts nothing: it is given the URL of a daemon whose
// upstream is `jobwatch simulate` (tests/browser/run.sh starts both), seeds it
// through the API, then checks what a person would see:
//   - the page asks for api.token and loads;
//   - it shows the counts of the run, as GET /v1/status has them;
//   - it updates when a watch ends (the outcome arrives through the event stream);
//   - the redeliver button makes a dead delivery pending again;
//   - the search opens one watch with its deliveries.
//
//   node status-page.mjs --url http://127.0.0.1:8080 [--token T] [--dead-url URL]
//                        [--screenshot FILE] [--only-screenshot]
// --dead-url: a webhook URL where nothing answers (its delivery ends dead).
// --only-screenshot: no seeding or checks, just the picture (for the README,
// against `jobwatch demo`). Prints "N passed, M failed" last; exits 1 on a failure.

import { chromium } from "playwright-core";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1] && !all[i + 1].startsWith("--") ? all[i + 1] : true]);
    return acc;
  }, []),
);
const base = String(args.url || "").replace(/\/$/, "");
if (!base) {
  console.error("usage: node status-page.mjs --url http://HOST:PORT [--token T] [--dead-url URL] [--screenshot FILE] [--only-screenshot]");
  process.exit(64);
}
const token = args.token && args.token !== true ? String(args.token) : null;
const headers = { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) };

async function api(method, path, body) {
  const r = await fetch(base + path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text.slice(0, 300)}`);
  return json;
}

/** `f()` until it returns a truthy value, or throw after `ms` with `what`. */
async function eventually(what, ms, f) {
  const until = Date.now() + ms;
  let last;
  for (;;) {
    try { last = await f(); if (last) return last; } catch (e) { last = e.message; }
    if (Date.now() > until) throw new Error(`${what}: not within ${ms} ms (last: ${JSON.stringify(last)})`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

let passed = 0, failed = 0;
async function check(name, f) {
  try { await f(); passed++; console.log(`ok   ${name}`); }
  catch (e) { failed++; console.log(`FAIL ${name}: ${e.message}`); }
}

const stamp = Date.now().toString(36);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on("pageerror", (e) => { failed++; console.log(`FAIL the page threw: ${e.message}`); });

  if (args["only-screenshot"]) {
    await page.goto(base + "/");
    if (token) await enterToken(page);
    await page.waitForTimeout(Number(args.wait || 8000));
    await page.screenshot({ path: String(args.screenshot), fullPage: true });
    console.log(`screenshot: ${args.screenshot}`);
  } else {
    await run(page);
  }
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

async function enterToken(page) {
  await page.getByTestId("tokenbox").waitFor({ state: "visible", timeout: 10000 });
  await page.getByTestId("token").fill(token);
  await page.getByTestId("token").press("Enter");
}

async function run(page) {
  // A run: outcomes of every kind, one watch that keeps running, one dead delivery.
  const ids = ["succeed-1", "succeed-2", "succeed-3", "done-4", "failed-5", "failure-6", "badrequest-7"].map((i) => `${i}-${stamp}`);
  await api("POST", "/v1/jobs", { kind: "copy", ids });
  await api("POST", "/v1/jobs", { kind: "delete", ids: [`running-${stamp}`] });
  const deadId = `failed-dead-${stamp}`;
  if (args["dead-url"]) {
    await api("POST", "/v1/jobs", { kind: "copy", ids: [deadId], webhook_url: String(args["dead-url"]) });
  }
  const status = await eventually("the run's outcomes are stored", 60000, async () => {
    const s = await api("GET", "/v1/status");
    const ended = Object.values(s.watches.ended_by_outcome).reduce((a, b) => a + b, 0);
    return ended >= ids.length + (args["dead-url"] ? 1 : 0) ? s : null;
  });
  const dead = args["dead-url"]
    ? await eventually("a delivery is dead", 60000, async () => (await api("GET", "/v1/deliveries?status=dead")).deliveries[0])
    : null;

  await page.goto(base + "/");
  if (token) {
    await check("the page asks for api.token", async () => { await enterToken(page); });
  }

  await check("the page shows the counts of the run", async () => {
    await eventually("running count", 10000, async () =>
      (await page.getByTestId("running").textContent()).trim() === String(status.watches.running));
    for (const [outcome, n] of Object.entries(status.watches.ended_by_outcome)) {
      await eventually(`${outcome} count`, 10000, async () => {
        const row = page.getByTestId(`ended-${outcome}`);
        return (await row.count()) === 1 && (await row.locator("td").nth(1).textContent()).trim() === String(n);
      });
    }
    await eventually("the upstream's health", 10000, async () =>
      (await page.getByTestId("upstreams").locator("tr").count()) >= 1);
  });

  await check("the page updates when a watch ends", async () => {
    const before = Number((await page.getByTestId("ended-succeeded").locator("td").nth(1).textContent()).trim());
    const live = `succeed-live-${stamp}`;
    await api("POST", "/v1/jobs", { kind: "copy", ids: [live] });
    await page.getByTestId(`feed-copy-${live}`).waitFor({ timeout: 30000 });
    await eventually("the succeeded count moves", 10000, async () =>
      Number((await page.getByTestId("ended-succeeded").locator("td").nth(1).textContent()).trim()) === before + 1);
    const pill = (await page.getByTestId("live").textContent()).trim();
    if (pill !== "live") throw new Error(`the stream says ${pill}`);
  });

  if (args.screenshot) {
    // A few seconds of chart before the picture.
    await page.waitForTimeout(3000);
    await page.screenshot({ path: String(args.screenshot), fullPage: true });
    console.log(`screenshot: ${args.screenshot}`);
  }

  if (dead) {
    await check("the redeliver button makes a dead delivery pending again", async () => {
      const button = page.getByTestId(`redeliver-${dead.id}`);
      await button.waitFor({ timeout: 15000 });
      await button.click();
      await eventually("the row says pending", 10000, async () =>
        (await page.getByTestId(`dead-status-${dead.id}`).textContent()).trim() === "pending");
      // The daemon sent it again: one more attempt than when it was dead.
      await eventually("a new attempt", 15000, async () =>
        (await api("GET", `/v1/deliveries/${dead.id}`)).attempts > dead.attempts);
    });
  }

  await check("the search opens a watch with its deliveries", async () => {
    const id = args["dead-url"] ? deadId : ids[0];
    await page.getByTestId("kind").selectOption("copy");
    await page.getByTestId("jobid").fill(id);
    await page.getByTestId("jobid").press("Enter");
    const found = page.getByTestId("found");
    await eventually("the watch is shown", 10000, async () => (await found.textContent()).includes(id));
    const text = await found.textContent();
    if (!/failed|succeeded/.test(text)) throw new Error(`no outcome in ${text}`);
    if (args["dead-url"] && !text.includes(String(args["dead-url"]))) throw new Error(`no delivery to ${args["dead-url"]}`);
  });
}
