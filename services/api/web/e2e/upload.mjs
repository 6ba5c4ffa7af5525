// Drives the page in headless Chromium: upload a label volume, wait for the job to succeed and
// the heart to be drawn, screenshot the 3D view. Used by tests/test_web.py.
//   node e2e/upload.mjs BASE_URL VOLUME SCREENSHOT [TOKEN]
import { chromium } from "playwright-core";

const [baseUrl, volume, screenshot, token] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => { if (message.type() === "error") problems.push(`console: ${message.text()}`); });
  await page.goto(baseUrl);
  await page.waitForSelector("#labels option[value='mmwhs-raw']", { state: "attached" });
  const options = await page.evaluate(() => ({
    resolution: [document.getElementById("resolution").min, document.getElementById("resolution").max],
    refine: [document.getElementById("refine").min, document.getElementById("refine").max],
    points: [document.getElementById("points").min, document.getElementById("points").max,
             document.getElementById("points").value],
    frames: [document.getElementById("frames").min, document.getElementById("frames").max,
             document.getElementById("frames").value],
    labels: [...document.getElementById("labels").options].map((option) => option.value),
  }));
  if (token) await page.fill("#token", token).then(() => page.dispatchEvent("#token", "change"));
  await page.fill("#resolution", "48");
  await page.fill("#refine", "0");
  await page.fill("#frames", "4");
  await page.setInputFiles("#file", volume);
  await page.waitForSelector("body[data-viewer^='ready']", { timeout: 240_000 });
  await page.waitForTimeout(500);
  await page.locator("#viewer").screenshot({ path: screenshot });
  const summary = {
    viewer: await page.getAttribute("body", "data-viewer"),
    status: await page.textContent("#status"),
    classRows: await page.locator("#classes tbody tr").count(),
    downloads: await page.locator("#downloads li").count(),
    previewLoaded: await page.evaluate(() => document.getElementById("preview").naturalWidth > 0),
    frame: await page.textContent("#frame"),
    options,
    problems,
  };
  console.log(JSON.stringify(summary));
} finally {
  await browser.close();
}
