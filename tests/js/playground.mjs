// Drives the playground page (GET /) in headless Chromium against a live vace server, as a person would: API key,
// upload a video, an out-of-range field, then a small preprocessed job watched to the end (its progress bar and live
// preview). Prints one JSON line
// with what the page showed; tests/test_playground.py makes the assertions.
// Usage: VACE_URL=http://127.0.0.1:PORT VACE_KEY=... node playground.mjs VIDEO.mp4 SCREENSHOT.png
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [videoPath, screenshotPath] = process.argv.slice(2);
const base = process.env.VACE_URL;
const key = process.env.VACE_KEY;
const JOB_TIMEOUT_MS = Number(process.env.VACE_JOB_TIMEOUT_MS || 150_000);

const userDataDir = mkdtempSync(join(tmpdir(), "vace-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1440, height: 1120 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const report = { pageErrors: [], consoleErrors: [], foreignRequests: [] };
const text = (selector) => page.locator(selector).first().textContent();
let page;

try {
  page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30_000);
  page.on("pageerror", (error) => report.pageErrors.push(String(error)));
  page.on("console", (msg) => { if (msg.type() === "error") report.consoleErrors.push(msg.text()); });
  context.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(base + "/") && !/^(data|blob):/.test(url)) report.foreignRequests.push(url);
  });

  await page.goto(base + "/");
  await page.waitForSelector("body[data-ready='1']");
  report.title = await page.title();
  report.apps = await page.locator("#app option").evaluateAll((os) => os.map((o) => o.value));
  report.keyFieldVisible = await page.locator("#api-key").isVisible();
  report.formDefaults = await page.evaluate(() => ({
    num_frames: document.querySelector("#f-num_frames").value,
    num_frames_max: document.querySelector("#f-num_frames").max,
    sampler: document.querySelector("#f-sampler").value,
    sampler_options: [...document.querySelector("#f-sampler").options].map((o) => o.value),
    preprocess: document.querySelector("#f-preprocess").checked,
  }));
  await page.selectOption("#app", "fal-ai/wan-vace-14b");
  await page.selectOption("#task", "pose");

  // Without the key the upload is refused, and the page says so at the key field.
  const upload = page.locator("input[data-upload-for='video_url']");
  await upload.setInputFiles(videoPath);
  await page.waitForFunction(() => document.querySelector("[data-error-for='api_key']").textContent !== "");
  report.missingKeyError = await text("[data-error-for='api_key']");

  await page.fill("#api-key", key);
  await upload.setInputFiles(videoPath);
  await page.waitForFunction(() => document.querySelector("#f-video_url").value.includes("/files/"));
  report.videoUrl = await page.inputValue("#f-video_url");
  report.uploadStatus = await text("[data-upload-status='video_url']");
  report.keyErrorAfterUpload = await text("[data-error-for='api_key']");
  await page.fill("#f-prompt", "a dancer on a beach at sunset");

  // An out-of-range field: the server's 422 message appears next to it.
  await page.fill("#f-num_frames", "500");
  await page.click("#submit");
  await page.waitForFunction(() => document.querySelector("[data-error-for='num_frames']").textContent !== "");
  report.rangeError = await text("[data-error-for='num_frames']");
  report.rangeFieldInvalid = await page.locator("[data-field='num_frames']").evaluate((f) => f.classList.contains("invalid"));

  // The small job, preprocessed so that the control video shows too.
  await page.fill("#f-num_frames", "17");
  await page.fill("#f-num_inference_steps", "4");
  await page.selectOption("#f-acceleration", "none");
  await page.fill("#f-seed", "1");
  await page.check("#f-preprocess");
  await page.fill("#f-loras", "tiny-wan21:0.5");
  await page.evaluate(() => {
    window.progressSeen = [];
    new MutationObserver(() => window.progressSeen.push(document.querySelector("#progress").value))
      .observe(document.querySelector("#progress"), { attributes: true, attributeFilter: ["value"] });
    // Each image the live preview shows: its step, its size, whether it was on screen and the job still running.
    window.previewsSeen = [];
    const image = document.querySelector("#live-preview-image");
    image.addEventListener("load", () => window.previewsSeen.push({
      step: Number(image.dataset.step), width: image.naturalWidth, height: image.naturalHeight,
      shown: !document.querySelector("#live-preview").hidden, running: !document.querySelector("#cancel").hidden,
    }));
  });
  const started = Date.now();
  await page.click("#submit");
  const loaded = (id) => document.querySelector(`#${id}`).readyState >= 1;  // metadata loaded, at least
  await page.waitForFunction(loaded, "result-video", { timeout: JOB_TIMEOUT_MS });
  await page.waitForFunction(loaded, "control-video", { timeout: 30_000 });
  report.jobSeconds = (Date.now() - started) / 1000;
  report.rangeErrorAfterFix = await text("[data-error-for='num_frames']");
  Object.assign(report, await page.evaluate(() => {
    const q = (s) => document.querySelector(s);
    return {
      progressSeen: window.progressSeen,
      previewsSeen: window.previewsSeen,
      progress: q("#progress").value,
      progressText: q("#progress-text").textContent,
      log: q("#log").textContent,
      requestId: q("#run-state code")?.textContent,
      seed: q("#result-seed").textContent,
      resultSrc: q("#result-video").currentSrc,
      resultReadyState: q("#result-video").readyState,
      resultSize: [q("#result-video").videoWidth, q("#result-video").videoHeight],
      resultDownload: q("#result-download").href,
      controlSrc: q("#control-video").currentSrc,
      controlReadyState: q("#control-video").readyState,
      controlVisible: !q("#control-figure").hidden,
      formError: q("#form-error").textContent,
      snippets: { curl: q("#snippet-curl").textContent, python: q("#snippet-python").textContent,
                  js: q("#snippet-js").textContent },
    };
  }));
  // Decode a frame from the middle of each video (loadeddata), for the check and for the screenshot.
  report.decoded = await page.evaluate(() => Promise.all(["#control-video", "#result-video"].map((id) => {
    const video = document.querySelector(id);
    video.pause();
    return new Promise((resolve) => {
      video.addEventListener("seeked", () => resolve(video.readyState), { once: true });
      video.currentTime = video.duration / 2;
    });
  })));
  // For the screenshot: the players' loading spinners go once they can play on (or after 3 s), and Chromium
  // repaints what was scrolled out of view.
  await page.waitForFunction(() => [...document.querySelectorAll("video")].every((v) => v.readyState >= 3), null,
                             { timeout: 3000 }).catch(() => {});
  await page.evaluate(async () => {
    // Only players with a source: play() on one without (the mask video of a job without a mask) never settles.
    const videos = [...document.querySelectorAll("#results video")].filter((v) => v.currentSrc);
    await Promise.race([Promise.all(videos.map((v) => v.play().catch(() => {}))),
                        new Promise((resolve) => setTimeout(resolve, 3000))]);
    await new Promise((resolve) => setTimeout(resolve, 400));
    videos.forEach((v) => v.pause());
  });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.waitForTimeout(500);
  await page.screenshot({ path: screenshotPath });
} catch (error) {
  report.failure = String(error && error.stack || error);
  if (page) await page.screenshot({ path: screenshotPath, fullPage: true }).catch(() => {});
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(report));
