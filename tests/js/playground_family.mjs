// Drives the playground page (GET /) in headless Chromium through the VACE family's endpoints, as a person would:
// each endpoint's own form, a mask upload with its overlay preview (and a black mask refused next to its field),
// outpainting sides with the canvas preview of where the source lands, reframe of a letterboxed clip with its
// trim and zoom preview, and one small reframe job run from the page. Prints one JSON line with what the page
// showed; tests/test_playground_family.py makes the assertions.
// Usage: VACE_URL=... VACE_KEY=... node playground_family.mjs CLIP.mp4 MASK.mp4 BLACK.mp4 LETTERBOX.mp4 SCREENSHOT.png
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [clip, mask, black, letterbox, screenshotPath] = process.argv.slice(2);
const base = process.env.VACE_URL;
const JOB_TIMEOUT_MS = Number(process.env.VACE_JOB_TIMEOUT_MS || 200_000);

const userDataDir = mkdtempSync(join(tmpdir(), "vace-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1440, height: 1300 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const report = { pageErrors: [], consoleErrors: [] };
let page;

/** What the preview shows once its caption says ``expected``: caption, notes, canvas size and how much of the
canvas is red (generated), on the whole and along its edges. */
async function previewShowing(expected) {
  await page.waitForFunction((text) => document.querySelector("#preview-caption").textContent.includes(text)
                             && !document.querySelector("#preview-canvas").hidden, expected);
  return page.evaluate(() => {
    const canvas = document.querySelector("#preview-canvas");
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    const red = (x, y) => {
      const i = 4 * (y * canvas.width + x);
      return data[i] - (data[i + 1] + data[i + 2]) / 2 > 60;
    };
    const share = (points) => points.filter(([x, y]) => red(x, y)).length / points.length;
    const all = [];
    for (let y = 0; y < canvas.height; y += 2) for (let x = 0; x < canvas.width; x += 2) all.push([x, y]);
    const column = (x) => [...Array(canvas.height).keys()].map((y) => [x, y]);
    const row = (y) => [...Array(canvas.width).keys()].map((x) => [x, y]);
    return {
      caption: document.querySelector("#preview-caption").textContent,
      notes: [...document.querySelectorAll("#preview-notes li")].map((li) => li.textContent),
      size: [canvas.width, canvas.height],
      red: share(all),
      edges: { left: share(column(0)), right: share(column(canvas.width - 1)), top: share(row(0)),
               middle: share(row(Math.floor(canvas.height / 2))) },
    };
  });
}

async function upload(field, path) {
  const before = await page.inputValue(`#f-${field}`);
  await page.locator(`input[data-upload-for='${field}']`).setInputFiles(path);
  await page.waitForFunction(([name, old]) => {
    const value = document.querySelector(`#f-${name}`).value;
    return value.includes("/files/") && value !== old;
  }, [field, before]);
}

const fieldsOf = () => page.evaluate(() => [...document.querySelectorAll("[data-field]")].map((f) => f.dataset.field));

try {
  page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(60_000);
  page.on("pageerror", (error) => report.pageErrors.push(String(error)));
  page.on("console", (msg) => { if (msg.type() === "error") report.consoleErrors.push(msg.text()); });
  await page.goto(base + "/");
  await page.waitForSelector("body[data-ready='1']");
  await page.fill("#api-key", process.env.VACE_KEY);
  await page.dispatchEvent("#api-key", "change");
  await page.selectOption("#app", "fal-ai/wan-vace-14b");
  report.tasks = await page.locator("#task option").evaluateAll((os) => os.map((o) => [o.value, o.textContent]));
  report.firstTask = await page.inputValue("#task");

  // Inpainting: its form has the mask fields; the mask shows over the video, red where it regenerates.
  await page.selectOption("#task", "inpainting");
  report.inpaintingFields = await fieldsOf();
  report.maskAccept = await page.getAttribute("input[data-upload-for='mask_video_url']", "accept");
  await upload("video_url", clip);
  report.inpaintingVideo = await page.inputValue("#f-video_url");
  await upload("mask_video_url", mask);
  report.inpainting = await previewShowing("generated (red)");
  // A black mask: the job would refuse it, and the preview says so under the field before anything runs.
  await upload("mask_video_url", black);
  await page.waitForFunction(() => document.querySelector("[data-error-for='mask_video_url']").textContent !== "");
  report.blackMaskError = await page.textContent("[data-error-for='mask_video_url']");

  // Outpainting: the video is carried over (same field); choosing a side shows the grown canvas.
  await page.selectOption("#task", "outpainting");
  report.outpaintingFields = await fieldsOf();
  report.carriedVideo = (await page.inputValue("#f-video_url")) === report.inpaintingVideo;
  await page.check("#f-expand_left");
  report.outpainting = await previewShowing("generated (red)");

  // Reframe of a letterboxed clip to 1:1: the bars go, the picture sits in the middle; zoom covers more of it.
  await page.selectOption("#task", "reframe");
  report.reframeFields = await fieldsOf();
  await upload("video_url", letterbox);
  await page.selectOption("#f-aspect_ratio", "1:1");
  await page.selectOption("#f-resolution", "240p");
  report.reframe = await previewShowing("output 320x320");
  await page.fill("#f-zoom_factor", "0.5");
  await page.dispatchEvent("#f-zoom_factor", "change");
  await page.waitForFunction(() => [...document.querySelectorAll("#preview-notes li")]
    .some((li) => li.textContent.startsWith("reframe: zoom 0.5")));
  report.zoomed = await previewShowing("output 320x320");

  // One small reframe job from the page (no prompt: reframe's is optional).
  await page.fill("#f-zoom_factor", "0");
  await page.fill("#f-num_inference_steps", "2");
  await page.selectOption("#f-acceleration", "none");
  await page.fill("#f-seed", "1");
  await page.click("#submit");
  await page.waitForFunction(() => document.querySelector("#result-video").readyState >= 1, null,
                             { timeout: JOB_TIMEOUT_MS });
  Object.assign(report, await page.evaluate(() => {
    const q = (s) => document.querySelector(s);
    return { resultSize: [q("#result-video").videoWidth, q("#result-video").videoHeight],
             log: q("#log").textContent, formError: q("#form-error").textContent,
             curl: q("#snippet-curl").textContent };
  }));

  // The base endpoint: the task picks what the video is for; without one it is text-to-video.
  await page.selectOption("#task", "");
  report.baseFields = await fieldsOf();
  report.baseTaskOptions = await page.locator("#f-task option").evaluateAll((os) => os.map((o) => o.value));
  report.baseCurl = await page.textContent("#snippet-curl");
  // Back to reframe for the screenshot: the form comes back with the values set, and so does its preview.
  await page.selectOption("#task", "reframe");
  report.reframeAgain = await previewShowing("output 320x320");
  await page.locator("#preview").scrollIntoViewIfNeeded();
  await page.screenshot({ path: screenshotPath });
} catch (error) {
  report.failure = String(error && error.stack || error);
  if (page) await page.screenshot({ path: screenshotPath, fullPage: true }).catch(() => {});
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(report));
