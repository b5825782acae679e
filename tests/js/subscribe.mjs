// Drives the unmodified @fal-ai/client against a vace server: upload a control video with fal.storage.upload,
// then fal.subscribe to an endpoint with logs, and print one JSON line with what came back.
// Run by tests/test_server_clients.py; usage:
//   VACE_URL=https://127.0.0.1:8443 FAL_KEY=... NODE_EXTRA_CA_CERTS=cert.pem node subscribe.mjs ENDPOINT VIDEO
import { readFile } from "node:fs/promises";
import { fal } from "@fal-ai/client";

const [endpoint, videoPath] = process.argv.slice(2);
const base = process.env.VACE_URL;

// The README snippet: rewrite fal's hosts to the server (queue first: "https://fal.run" is not a prefix of it).
fal.config({
  credentials: process.env.FAL_KEY,
  requestMiddleware: async (request) => ({
    ...request,
    url: request.url
      .replace("https://queue.fal.run", `${base}/queue`)
      .replace("https://rest.fal.ai", base)
      .replace("https://fal.run", base),
  }),
});

const video = new Blob([await readFile(videoPath)], { type: "video/mp4" });
const videoUrl = await fal.storage.upload(video);
const updates = [];
const result = await fal.subscribe(endpoint, {
  input: {
    prompt: "a person dancing",
    video_url: videoUrl,
    num_frames: 17,
    num_inference_steps: 2,
    acceleration: "none",
    seed: 7,
  },
  logs: true,
  pollInterval: 200,
  onQueueUpdate: (update) => updates.push({ status: update.status, logs: (update.logs ?? []).map((l) => l.message) }),
});
console.log(JSON.stringify({ videoUrl, requestId: result.requestId, data: result.data, updates }));
