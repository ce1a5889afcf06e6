// Drives Debian's Chromium with playwright-core for the Python browser tests (tests/browser/__init__.py).
// One JSON command per stdin line, one JSON answer per stdout line; the browser lives as long as stdin.
import readline from "node:readline";
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
  ],
});
let context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
let page = await context.newPage();
let navigations = 0;
const watch = (p) => p.on("framenavigated", (frame) => { if (frame === p.mainFrame()) navigations += 1; });
watch(page);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function textOf(selector) {
  try {
    const locator = page.locator(selector);
    if ((await locator.count()) === 0) return null;
    return await locator.first().innerText({ timeout: 1000 });
  } catch {
    return null; // the page was reloading under us: try again
  }
}

const commands = {
  async goto({ url }) {
    const response = await page.goto(url, { waitUntil: "load" });
    return { status: response ? response.status() : 0 };
  },
  async text({ selector }) { return { text: await textOf(selector) }; },
  async count({ selector }) { return { count: await page.locator(selector).count() }; },
  async url() { return { url: page.url() }; },
  async navigations() { return { navigations }; },
  // Waits for `selector` to contain `contains` (or, with `absent`, to be gone) while the page
  // reloads itself; never reloads on its own.
  async waitText({ selector, contains, absent, timeout }) {
    const deadline = Date.now() + timeout;
    const before = navigations;
    while (Date.now() < deadline) {
      const text = await textOf(selector);
      if (absent ? text === null : text !== null && text.includes(contains)) {
        return { found: true, text, reloads: navigations - before };
      }
      await sleep(100);
    }
    return { found: false, text: await textOf(selector), reloads: navigations - before };
  },
  // Clicks a form's submit button and waits for the POST's answer; the page it leads to is awaited
  // by the caller (waitText), since the page may also be reloading itself at that moment.
  async click({ selector }) {
    const posted = page.waitForResponse((response) => response.request().method() === "POST", { timeout: 30000 });
    await page.locator(selector).first().click();
    const response = await posted;
    return { url: page.url(), status: response.status() };
  },
  async fill({ selector, value }) { await page.locator(selector).first().fill(value); return {}; },
  async submit({ selector }) {
    await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.locator(selector).first().press("Enter")]);
    return { url: page.url() };
  },
  async screenshot({ path, fullPage }) { await page.screenshot({ path, fullPage: fullPage !== false }); return {}; },
  async viewport({ width, height, mobile }) {
    const url = page.url();
    await context.close();
    context = await browser.newContext({ viewport: { width, height }, isMobile: !!mobile, hasTouch: !!mobile, deviceScaleFactor: mobile ? 2 : 1 });
    page = await context.newPage();
    watch(page);
    if (url && url !== "about:blank") await page.goto(url, { waitUntil: "load" });
    return {};
  },
  async overflow() {
    return { overflow: await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth) };
  },
};

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    const command = JSON.parse(line);
    answer = { ok: true, ...(await commands[command.op](command)) };
  } catch (error) {
    answer = { ok: false, error: String(error && error.stack ? error.stack : error) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
await browser.close();
