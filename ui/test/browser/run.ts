// The viewer in a real browser: Debian's chromium, headless, driven by
// playwright-core, against a running service that tests/it/viewer_browser.rs
// starts. It seeds the tenant over gRPC-Web itself, then signs in, filters,
// pages, opens and verifies an event (and sees a tampered answer fail),
// follows the log live, and checks the charts' totals. Screenshots go to
// VIEWER_OUTPUT. Exits non-zero on the first failed check.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Page } from "playwright-core";
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuditService, Outcome } from "../../src/gen/audit/v1/audit_pb";

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set (tests/it/viewer_browser.rs sets it)`);
  return value;
};
const base = env("VIEWER_URL");
const token = env("VIEWER_TOKEN");
const tenant = env("VIEWER_TENANT");
const verifierKey = env("VIEWER_VERIFIER_KEY");
const platformToken = env("VIEWER_PLATFORM_TOKEN");
const output = env("VIEWER_OUTPUT");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
mkdirSync(output, { recursive: true });

const audit = createClient(
  AuditService,
  createGrpcWebTransport({
    baseUrl: base,
    interceptors: [
      (next) => (req) => {
        req.header.set("authorization", `Bearer ${token}`);
        req.header.set("x-tenant-id", tenant);
        return next(req);
      },
    ],
  }),
);

// 60 events: 45 user.login (alice 23, bob 22; every third a failure) and 15
// document.read by carol; the viewer pages 50 at a time.
const LOGINS = 45;
const READS = 15;
async function seed(): Promise<void> {
  const events = [];
  for (let i = 0; i < LOGINS; i++) {
    events.push({
      action: "user.login",
      actor: { id: i % 2 === 0 ? "alice" : "bob" },
      outcome: i % 3 === 0 ? Outcome.FAILURE : Outcome.SUCCESS,
      source: "sso",
      metadata: { attempt: i, "10": "ten", "2": "two" },
    });
  }
  for (let i = 0; i < READS; i++) {
    events.push({ action: "document.read", actor: { id: "carol" }, resource: { type: "document", id: `d${i}` }, outcome: Outcome.SUCCESS, source: "docs" });
  }
  const answer = await audit.append({ events });
  assert.equal(answer.results.length, LOGINS + READS);
}

let current: Page | undefined;
const step = async (name: string, body: () => Promise<void>) => {
  process.stdout.write(`- ${name} ... `);
  try {
    await body();
  } catch (error) {
    // What the page showed when the check failed.
    await current?.screenshot({ path: join(output, "failed.png"), fullPage: true }).catch(() => undefined);
    throw error;
  }
  process.stdout.write("ok\n");
};
const shot = (page: Page, name: string) => page.screenshot({ path: join(output, `${name}.png`), fullPage: true });
const rows = (page: Page) => page.locator("table.log tbody tr");
const apply = async (page: Page, fill: Record<string, string>) => {
  for (const [label, value] of Object.entries(fill)) await page.getByLabel(label, { exact: true }).fill(value);
  await page.getByRole("button", { name: "Apply" }).click();
};

async function main(): Promise<void> {
  await seed();
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    current = page;
    const problems: string[] = [];
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("response", (r) => {
      if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
    });
    page.on("console", (m) => {
      if (m.type() === "error") problems.push(`console: ${m.text()}`);
    });

    await step("sign in with a bearer token and a tenant", async () => {
      await page.goto(`${base}/ui/`);
      await page.getByLabel("Credential type").selectOption("bearer");
      await page.getByLabel("Credential", { exact: true }).fill(token);
      await page.getByLabel("Tenant", { exact: true }).fill(tenant);
      await page.getByRole("button", { name: "Sign in" }).click();
      await rows(page).first().waitFor();
      assert.equal(await rows(page).count(), 50, "the first page holds 50 events");
      const stored = await page.evaluate(() => ({ local: JSON.stringify(localStorage), url: location.href }));
      assert.ok(!stored.local.includes(token) && !stored.url.includes(token), "the credential is in sessionStorage only");
      await shot(page, "01-signed-in");
    });

    await step("page through tokens by scrolling", async () => {
      await page.locator(".sentinel").scrollIntoViewIfNeeded();
      await page.waitForFunction(() => document.querySelectorAll("table.log tbody tr").length === 60);
      await page.getByText("60 events shown.").waitFor();
      const seqs = await rows(page).evaluateAll((rs) => rs.map((r) => Number(r.getAttribute("data-seq"))));
      assert.deepEqual(seqs, Array.from({ length: 60 }, (_, i) => 60 - i), "seq desc, no gap, no repeat");
    });

    await step("filter by action, order, and show an expression error at its offset", async () => {
      await apply(page, { Actions: "document.read" });
      await page.waitForFunction(() => document.querySelectorAll("table.log tbody tr").length === 15);
      await page.getByLabel("Order").selectOption("seq asc");
      await apply(page, { Actions: "", Expression: 'actor.id = "alice" AND outcome = OUTCOME_FAILURE' });
      await page.getByText(/^\d+ events shown\.$/).waitFor();
      const alice = await rows(page).evaluateAll((rs) => rs.map((r) => [r.children[1].textContent, r.children[4].textContent]));
      assert.equal(alice.length, 8, "alice's failures: i = 0, 6, 12, ..., 42");
      assert.ok(alice.every(([actor, outcome]) => actor === "alice" && outcome === "failure"));
      await apply(page, { Expression: "action = " });
      const error = page.locator("#expression-error");
      await error.waitFor();
      assert.match((await error.textContent()) ?? "", /Expression error at byte 9: expected a value/);
      await shot(page, "02-expression-error");
      await apply(page, { Expression: "" });
      await page.getByLabel("Order").selectOption("seq desc");
      await apply(page, {});
      await page.getByText("50 events shown; more below.").waitFor();
    });

    await step("pin the verifier key", async () => {
      await page.getByRole("tab", { name: "Settings" }).click();
      await page.getByLabel("Pinned verifier key").fill(verifierKey);
      await page.getByRole("button", { name: "Pin" }).click();
      await page.getByText("Pinned.", { exact: true }).waitFor();
      await page.getByRole("tab", { name: "Log" }).click();
      await rows(page).first().waitFor();
    });

    await step("open an event: fields and raw JSON", async () => {
      await page.locator('table.log tr[data-seq="60"] button').click();
      const dialog = page.getByRole("dialog");
      await dialog.waitFor();
      await dialog.getByText("Event 60: document.read").waitFor();
      await dialog.getByText("Raw JSON").click();
      assert.match((await dialog.locator("pre.json").textContent()) ?? "", /"action": "document.read"/);
      await shot(page, "03-event");
    });

    await step("verify the event against the pinned key", async () => {
      const dialog = page.getByRole("dialog");
      await dialog.getByRole("button", { name: "Verify" }).click();
      await dialog.getByText("Verified: this event is in the log the pinned key signed.").waitFor();
      assert.equal(await dialog.locator("ol.steps li.fail").count(), 0);
      assert.ok((await dialog.locator("ol.steps li.pass").count()) >= 8);
      await shot(page, "04-verified-page");
      await dialog.locator("section.verification").screenshot({ path: join(output, "04-verified.png") });
    });

    await step("a tampered event from the service fails verification", async () => {
      await page.getByRole("dialog").getByRole("button", { name: "Close" }).click();
      // The service's page of events, with one byte of the newest event's
      // action changed (same length, so the gRPC-Web framing still holds).
      await page.route("**/audit.v1.AuditService/Query", async (route) => {
        const response = await route.fetch();
        const body = Buffer.from(await response.body());
        const at = body.indexOf("document.read");
        if (at > 0) body.write("document.redd", at);
        await route.fulfill({ response, body });
      });
      await apply(page, {});
      await page.locator('table.log tr[data-seq="60"]', { hasText: "document.redd" }).getByRole("button").click();
      const dialog = page.getByRole("dialog");
      await dialog.getByText("Event 60: document.redd").waitFor();
      await dialog.getByRole("button", { name: "Verify" }).click();
      await dialog.getByText("Verification FAILED: do not rely on this event as shown.").waitFor();
      const failed = await dialog.locator("ol.steps li.fail").textContent();
      assert.match(failed ?? "", /Root matches the signed checkpoint/);
      await dialog.locator("section.verification").screenshot({ path: join(output, "05-tampered.png") });
      await page.unroute("**/audit.v1.AuditService/Query");
      await dialog.getByRole("button", { name: "Close" }).click();
      await apply(page, {});
      await page.locator('table.log tr[data-seq="60"]', { hasText: "document.read" }).waitFor();
    });

    await step("a tampered inclusion proof fails verification", async () => {
      await page.locator('table.log tr[data-seq="59"] button').click();
      await page.route("**/audit.v1.IntegrityService/GetInclusionProof", async (route) => {
        const response = await route.fetch();
        const body = Buffer.from(await response.body());
        // Field 5 (hashes), a 32-byte hash: tag 0x2a, length 0x20.
        const at = body.indexOf(Buffer.from([0x2a, 0x20]));
        assert.ok(at > 0, "the proof carries a hash");
        body[at + 2] ^= 0xff;
        await route.fulfill({ response, body });
      });
      const dialog = page.getByRole("dialog");
      await dialog.getByRole("button", { name: "Verify" }).click();
      await dialog.getByText("Verification FAILED: do not rely on this event as shown.").waitFor();
      await page.unroute("**/audit.v1.IntegrityService/GetInclusionProof");
      await dialog.getByRole("button", { name: "Close" }).click();
    });

    await step("live mode shows the heartbeat and receives an appended event", async () => {
      await page.getByLabel("Live (follow new events)").check();
      await page.getByText(/Live: heartbeat, log head at seq 60/).waitFor({ timeout: 30_000 });
      await audit.append({ events: [{ action: "live.test", actor: { id: "dave" }, source: "sso" }] });
      await page.locator('table.log tr.fresh[data-seq="61"]').waitFor({ timeout: 30_000 });
      assert.equal(await page.locator("table.log tr.fresh td").nth(2).textContent(), "live.test");
      await shot(page, "06-live");
      await page.getByLabel("Live (follow new events)").uncheck();
    });

    await step("charts count what the filter selects", async () => {
      await apply(page, { Actions: "user.login" });
      await page.getByRole("tab", { name: "Charts" }).click();
      const total = page.locator(".charts .total");
      await total.waitFor();
      assert.equal(await total.getAttribute("data-total"), String(LOGINS));
      assert.equal(await page.locator("figure.chart").getAttribute("data-sum"), String(LOGINS));
      const actors = await page.locator("table.top", { hasText: "Top actors" }).locator("tbody tr").evaluateAll((rs) =>
        rs.map((r) => [r.querySelector("th")?.textContent, r.querySelector(".n")?.textContent]),
      );
      assert.deepEqual(actors, [["alice", "23"], ["bob", "22"]]);
      const outcomes = await page.locator("table.top", { hasText: "Outcomes" }).locator("tbody tr").evaluateAll((rs) =>
        rs.map((r) => [r.querySelector("th")?.textContent, r.querySelector(".n")?.textContent]),
      );
      assert.deepEqual(outcomes, [["success", "30"], ["failure", "15"]]);
      await shot(page, "07-charts");
    });

    await step("usable at phone width", async () => {
      await page.setViewportSize({ width: 390, height: 844 });
      await page.getByRole("tab", { name: "Log" }).click();
      await rows(page).first().waitFor();
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      const wide = await page.evaluate(() =>
        Array.from(document.querySelectorAll("body *"))
          .filter((e) => e.getBoundingClientRect().right > window.innerWidth)
          .slice(0, 5)
          .map((e) => `${e.tagName}.${e.className}`),
      );
      assert.ok(overflow <= 0, `no horizontal scrolling at 390 px (overflow ${overflow}: ${wide.join(", ")})`);
      await shot(page, "08-phone");
    });

    await step("policy: retention and a legal hold (audit:admin)", async () => {
      await page.setViewportSize({ width: 1280, height: 800 });
      await page.getByRole("tab", { name: "Policy" }).click();
      await page.getByText("Events are kept forever.").waitFor();
      await page.getByLabel("Keep events for (days; empty: forever)").fill("30");
      await page.locator("form", { hasText: "Set retention" }).getByLabel("Reason").fill("SOC 2 evidence window");
      await page.getByRole("button", { name: "Set retention" }).click();
      await page.getByText("Events are kept 30 days.").waitFor();
      await page.getByLabel("Reason for a new hold").fill("litigation 2026-17");
      await page.getByRole("button", { name: "Create a hold from the current filters" }).click();
      const hold = page.locator("tr[data-hold]");
      await hold.waitFor();
      assert.match((await hold.textContent()) ?? "", /user\.login.*litigation 2026-17/);
      await hold.getByRole("textbox").fill("settled");
      await hold.getByRole("button", { name: "Release" }).click();
      await hold.getByText(/released .* by reviewer: settled/).waitFor();
      await shot(page, "09-policy");
    });

    await step("a platform credential reads with * and narrows to one tenant", async () => {
      const expected = (await audit.stats({})).total;
      await page.getByRole("button", { name: "Sign out" }).click();
      await page.getByLabel("Credential type").selectOption("bearer");
      await page.getByLabel("Credential", { exact: true }).fill(platformToken);
      await page.getByLabel("Tenant", { exact: true }).fill("*");
      await page.getByRole("button", { name: "Sign in" }).click();
      await rows(page).first().waitFor();
      const box = page.locator("#tenant-select");
      await box.waitFor();
      assert.equal(await box.inputValue(), "*");
      assert.equal(await page.getByRole("tab", { name: "Policy" }).isVisible(), false, "no Policy with *");
      await box.fill(tenant);
      await box.dispatchEvent("change");
      await page.getByRole("tab", { name: "Charts" }).click();
      const total = page.locator(".charts .total");
      await total.waitFor();
      assert.equal(await total.getAttribute("data-total"), String(expected), "the tenant's events, read as *");
      await shot(page, "10-platform");
    });

    assert.deepEqual(problems, [], "no script errors in the page");
  } finally {
    await browser.close();
  }
}

main().then(
  () => console.log(`viewer browser test passed; screenshots in ${output}`),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
