// Drives the playground page's mask painter in headless Chromium, as a person would: inpainting, a video uploaded,
// "Paint" shows its first frame, a stroke with the mouse and one with a finger (touch pointer events), a wider
// stroke, the eraser through the middle, Undo of a mistake, "Use this mask" (uploaded through the upload API into
// mask_image_url), the preview of the first frame with the mask, then a small job run from the page whose result
// and tracked mask video load. Prints one JSON line with what the page showed; tests/test_playground_mask.py makes
// the assertions.
// Usage: VACE_URL=... VACE_KEY=... node playground_mask.mjs CLIP.mp4 SCREENSHOT.png
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [clip, screenshotPath] = process.argv.slice(2);
const base = process.env.VACE_URL;
const JOB_TIMEOUT_MS = Number(process.env.VACE_JOB_TIMEOUT_MS || 300_000);

const userDataDir = mkdtempSync(join(tmpdir(), "vace-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1440, height: 1400 },
  hasTouch: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const report = { pageErrors: [], consoleErrors: [] };
let page;

/** Page coordinates of a point given in the video's pixels on the painter's mask layer. */
async function at(x, y) {
  return page.evaluate(([vx, vy]) => {
    const layer = document.querySelector("#painter-mask");
    const box = layer.getBoundingClientRect();
    return [box.left + (vx * box.width) / layer.width, box.top + (vy * box.height) / layer.height];
  }, [x, y]);
}

/** A mouse stroke (the browser turns it into pointer events) through the points, in video pixels. */
async function mouseStroke(points) {
  const [first, ...rest] = points;
  await page.mouse.move(...(await at(...first)));
  await page.mouse.down();
  for (const p of rest) await page.mouse.move(...(await at(...p)), { steps: 8 });
  await page.mouse.up();
}

/** A finger stroke: touch input through the DevTools protocol, which Chromium turns into touch pointer events
(pointerType "touch") on the mask layer, as a phone's browser does. */
async function touchStroke(points) {
  const cdp = await context.newCDPSession(page);
  const touch = async (type, point) => {
    const [x, y] = await at(...point);
    await cdp.send("Input.dispatchTouchEvent", { type, touchPoints: type === "touchEnd" ? [] : [{ x, y }] });
  };
  await touch("touchStart", points[0]);
  for (const p of points.slice(1)) await touch("touchMove", p);
  await touch("touchEnd", points[points.length - 1]);
  await cdp.detach();
}

/** The painted layer as the mask it becomes: white pixel count inside and outside boxes, in video pixels. */
const painted = () => page.evaluate(() => {
  const layer = document.querySelector("#painter-mask");
  const { data } = layer.getContext("2d").getImageData(0, 0, layer.width, layer.height);
  const on = (x, y) => data[4 * (y * layer.width + x) + 3] >= 128;
  let total = 0;
  for (let i = 3; i < data.length; i += 4) total += data[i] >= 128 ? 1 : 0;
  return { size: [layer.width, layer.height], total, at: (() => {
    const probe = {};
    for (const [name, x, y] of [["stroke", 100, 60], ["touch", 100, 180], ["erased", 210, 120],
                                ["wide", 300, 120], ["undone", 380, 30], ["outside", 20, 220]]) {
      probe[name] = on(x, y);
    }
    return probe;
  })() };
});

try {
  page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(60_000);
  page.on("pageerror", (error) => report.pageErrors.push(String(error)));
  page.on("console", (msg) => { if (msg.type() === "error") report.consoleErrors.push(msg.text()); });
  await page.exposeFunction("reportPointer", (type) => { (report.pointerTypes ||= []).push(type); });
  await page.addInitScript(() => {
    addEventListener("pointerdown", (event) => window.reportPointer(event.pointerType), true);
  });
  await page.goto(base + "/");
  await page.waitForSelector("body[data-ready='1']");
  await page.fill("#api-key", process.env.VACE_KEY);
  await page.dispatchEvent("#api-key", "change");
  await page.selectOption("#app", "fal-ai/wan-22-vace-fun-a14b");
  await page.selectOption("#task", "inpainting");

  // Painting before there is a video says why it cannot.
  await page.click("#paint-mask");
  await page.waitForFunction(() => document.querySelector("[data-error-for='mask_image_url']").textContent !== "");
  report.noVideoError = await page.textContent("[data-error-for='mask_image_url']");

  await page.locator("input[data-upload-for='video_url']").setInputFiles(clip);
  await page.waitForFunction(() => document.querySelector("#f-video_url").value.includes("/files/"));
  await page.click("#paint-mask");
  await page.waitForSelector("#painter[data-ready='1']");
  report.frame = await page.evaluate(() => {
    const frame = document.querySelector("#painter-frame");
    return { size: [frame.videoWidth, frame.videoHeight], time: frame.currentTime, ready: frame.readyState };
  });

  // Brush strokes: the mouse across the top left, a finger across the bottom left, a wide one through the middle.
  await mouseStroke([[60, 60], [140, 60]]);
  await touchStroke([[60, 180], [100, 180], [140, 180]]);
  await page.locator("#painter-size").fill("80");
  await mouseStroke([[160, 120], [300, 120]]);
  // A stroke by mistake, undone; then the eraser through the wide stroke's middle.
  await page.locator("#painter-size").fill("20");
  await mouseStroke([[360, 30], [400, 30]]);
  report.beforeUndo = await painted();
  await page.click("#painter-undo");
  await page.click("[data-tool='eraser']");
  await page.locator("#painter-size").fill("40");
  await mouseStroke([[210, 60], [210, 180]]);
  report.painted = await painted();
  report.status = await page.textContent("#painter-status");

  // Use it: uploaded as the mask image; the preview shows the first frame with the (grown) mask.
  await page.click("#painter-use");
  await page.waitForFunction(() => document.querySelector("#f-mask_image_url").value.includes("/files/"));
  report.maskUrl = await page.inputValue("#f-mask_image_url");
  await page.waitForFunction(() => document.querySelector("#preview-caption").textContent.includes("generated (red)")
                             && !document.querySelector("#preview-canvas").hidden);
  report.preview = await page.evaluate(async () => {
    const canvas = document.querySelector("#preview-canvas");
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    const red = (x, y) => { const i = 4 * (y * canvas.width + x); return data[i] - (data[i + 1] + data[i + 2]) / 2 > 60; };
    const uploaded = await new Promise((resolve) => {
      const image = new Image();
      image.onload = () => {
        const c = document.createElement("canvas");
        c.width = image.width;
        c.height = image.height;
        c.getContext("2d").drawImage(image, 0, 0);
        const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let white = 0;
        const values = new Set();
        for (let i = 0; i < px.length; i += 4) { white += px[i] === 255 ? 1 : 0; values.add(px[i]); }
        resolve({ size: [c.width, c.height], white, values: [...values].sort((a, b) => a - b) });
      };
      image.src = document.querySelector("#f-mask_image_url").value;
    });
    return { caption: document.querySelector("#preview-caption").textContent,
             notes: [...document.querySelectorAll("#preview-notes li")].map((li) => li.textContent),
             redAtStroke: red(100, 60), redOutside: red(20, 225), uploaded };
  });

  // A small job from the page: the result and the tracked mask video load side by side.
  await page.fill("#f-prompt", "a red ball");
  await page.fill("#f-num_frames", "17");
  await page.fill("#f-num_inference_steps", "2");
  await page.selectOption("#f-acceleration", "none");
  await page.fill("#f-seed", "1");
  await page.click("#submit");
  await page.waitForFunction(() => document.querySelector("#result-video").readyState >= 1
                             && document.querySelector("#mask-video").readyState >= 1, null,
                             { timeout: JOB_TIMEOUT_MS });
  Object.assign(report, await page.evaluate(() => {
    const q = (s) => document.querySelector(s);
    return { resultSize: [q("#result-video").videoWidth, q("#result-video").videoHeight],
             maskVideoSize: [q("#mask-video").videoWidth, q("#mask-video").videoHeight],
             maskFigureShown: !q("#mask-figure").hidden, maskDownload: q("#mask-download").href,
             output: JSON.parse(q("#result-json").textContent), log: q("#log").textContent,
             formError: q("#form-error").textContent };
  }));
  await page.locator("#results").scrollIntoViewIfNeeded();
  await page.screenshot({ path: screenshotPath, fullPage: true });
} catch (error) {
  report.failure = String(error && error.stack || error);
  if (page) await page.screenshot({ path: screenshotPath, fullPage: true }).catch(() => {});
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(report));
