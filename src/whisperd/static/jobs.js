// The jobs panel: the jobs this browser submitted (kept in localStorage, so that the page can be
// left and come back to), the list of recent jobs, and the job the transcript panel follows.
import { ApiError, api, apiJson, explain } from "./api.js";
import { $ } from "./dom.js";
import { clearFile, updateOptions } from "./form.js";
import { clock, parseCues } from "./formats.js";
import { clearError, setProgress, setStatus, showError, toast } from "./messages.js";
import { isVideoLink, loadPlayer } from "./player.js";
import { state } from "./state.js";
import { showSegments, showVerbose, startTranscript } from "./transcript.js";

const JOB_STORE = "whisperd.jobs"; // localStorage: jobs this browser submitted
const WATCH_STORE = "whisperd.watching"; // localStorage: the job the page follows
const FINAL = new Set(["succeeded", "failed", "cancelled"]);

function savedJobs() {
  try {
    return JSON.parse(localStorage.getItem(JOB_STORE)) || [];
  } catch {
    return [];
  }
}

function rememberJob(job, name) {
  const jobs = savedJobs().filter((j) => j.id !== job.id);
  jobs.unshift({ id: job.id, name, created: job.created_at });
  localStorage.setItem(JOB_STORE, JSON.stringify(jobs.slice(0, 50)));
}

function forgetJob(id) {
  localStorage.setItem(JOB_STORE, JSON.stringify(savedJobs().filter((j) => j.id !== id)));
  if (localStorage.getItem(WATCH_STORE) === id) localStorage.removeItem(WATCH_STORE);
}

function jobName(job) {
  const saved = savedJobs().find((j) => j.id === job.id);
  return saved?.name || job.input?.filename || job.input?.url || job.id.slice(0, 8);
}

function ago(epoch) {
  const s = Date.now() / 1000 - epoch;
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(epoch * 1000).toLocaleDateString();
}

/** The list of jobs, with buttons that call `actions.open/follow/cancel(id, name)`. */
function renderJobs(jobs, actions) {
  $("jobs-note").hidden = jobs.length > 0;
  $("jobs-note").textContent = "No jobs yet. Long files run here, in the background.";
  const list = $("jobs");
  const focused = document.activeElement?.closest?.("#jobs [data-job]");
  const refocus = focused ? [focused.dataset.job, document.activeElement.dataset.act] : null;
  list.replaceChildren();
  for (const job of jobs) {
    const li = document.createElement("li");
    li.className = "job";
    li.dataset.job = job.id;
    const name = jobName(job);
    const { seconds, duration } = job.progress;
    const done = job.status === "succeeded" ? 100 : duration ? (100 * seconds) / duration : 0;
    const meta = [duration ? clock(duration) : null, ago(job.created_at)].filter(Boolean).join(" · ");
    li.innerHTML = `
      <div class="job-head">
        <span class="job-name"></span>
        <span class="badge"></span>
      </div>
      <progress max="100" aria-label="Progress"></progress>
      <div class="job-foot"><span class="job-meta"></span><span class="job-actions"></span></div>`;
    li.querySelector(".job-name").textContent = name;
    li.querySelector(".job-name").title = name;
    li.querySelector(".job-meta").textContent = meta;
    const badge = li.querySelector(".badge");
    badge.classList.add(`badge-${job.status}`);
    badge.textContent = job.cancel_requested && !FINAL.has(job.status) ? "cancelling" : job.status;
    const bar = li.querySelector("progress");
    bar.value = done;
    bar.hidden = FINAL.has(job.status);
    const buttons = li.querySelector(".job-actions");
    const action = (label, act, handler) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "ghost small";
      b.textContent = label;
      b.dataset.act = act;
      b.setAttribute("aria-label", `${label} ${name}`);
      b.addEventListener("click", handler);
      buttons.append(b);
    };
    if (job.status === "succeeded") action("Open", "open", () => actions.open(job.id, name));
    if (!FINAL.has(job.status)) {
      action("Follow", "follow", () => actions.follow(job.id, name));
      if (!job.cancel_requested) action("Cancel", "cancel", () => actions.cancel(job.id, name));
    }
    if (job.status === "failed" && job.error?.message) {
      const why = document.createElement("p");
      why.className = "job-error";
      why.textContent = job.error.message;
      li.append(why);
    }
    list.append(li);
  }
  if (refocus) list.querySelector(`[data-job="${refocus[0]}"] [data-act="${refocus[1]}"]`)?.focus();
}

let watchTimer = null;
let jobsTimer = null;

/** Follow a job in the transcript panel until it ends, then show its transcript. */
function watch(id, name) {
  clearTimeout(watchTimer);
  state.watching = id;
  localStorage.setItem(WATCH_STORE, id);
  startTranscript(name, "transcribe");
  setStatus("Queued…");
  setProgress(0, "");
  poll();

  async function poll() {
    if (state.watching !== id) return;
    let job;
    try {
      job = await apiJson(`/v1/jobs/${id}`);
    } catch (err) {
      if (err.status === 404) {
        forgetJob(id);
        setProgress(undefined);
        setStatus("That job is gone: finished jobs are kept for a day, then deleted.");
        $("empty").hidden = false;
        return;
      }
      watchTimer = setTimeout(poll, 3000); // the server may be restarting: keep trying
      return;
    }
    showJobProgress(job);
    if (!FINAL.has(job.status)) {
      watchTimer = setTimeout(poll, 1000);
      return;
    }
    localStorage.removeItem(WATCH_STORE);
    if (job.status === "succeeded") openResult(job);
    else if (job.status === "cancelled") {
      setStatus("The job was cancelled.");
      $("empty").hidden = false;
    } else {
      setProgress(undefined);
      setStatus("The job failed.");
      showError(new ApiError(-1, job.error), ["The job failed.", "See below why; fix that and submit it again."]);
      $("empty").hidden = false;
    }
    refreshJobs();
  }
}

/** Submit `form` as a job (of audio called `name`), then follow it. */
export async function startJob(form, name) {
  const job = await apiJson("/v1/jobs", { method: "POST", body: form });
  rememberJob(job, name);
  watch(job.id, name);
  refreshJobs();
}

/** The transcript panel follows no job any more (it is given to another transcript). */
export function stopWatching() {
  clearTimeout(watchTimer);
  state.watching = null;
  localStorage.removeItem(WATCH_STORE);
}

/** Follow again the job this browser followed when the page was left, if any. */
export function resumeWatching() {
  const watching = localStorage.getItem(WATCH_STORE);
  if (watching && state.jobsEnabled) {
    const saved = savedJobs().find((j) => j.id === watching);
    watch(watching, saved?.name ?? "transcript");
  }
}

function showJobProgress(job) {
  const { seconds, duration } = job.progress;
  const fraction = job.status === "succeeded" ? 1 : duration ? seconds / duration : 0;
  const text = duration ? `${clock(seconds)} of ${clock(duration)}` : "";
  setProgress(fraction, text);
  const words = {
    queued: "Waiting in the queue…",
    running: `${job.task === "translate" ? "Translating" : "Transcribing"} in the background; you can leave this page and come back.`,
    succeeded: "Done.",
    failed: "Failed.",
    cancelled: "Cancelled.",
  };
  setStatus(job.cancel_requested && !FINAL.has(job.status) ? "Cancelling…" : words[job.status]);
}

/** A finished job's transcript, whatever format it was asked in. */
function openResult(job) {
  const result = job.result;
  if (result && typeof result === "object" && Array.isArray(result.segments)) showVerbose(result);
  else if (typeof result === "string" && result.includes("-->")) showSegments(parseCues(result));
  else {
    const text = typeof result === "string" ? result : result?.text ?? "";
    const end = job.progress.duration ?? 0;
    showSegments(text.trim() ? [{ id: 0, start: 0, end, text }] : []);
  }
  const n = state.transcript.segments.length;
  setStatus(`Done: ${n} segment${n === 1 ? "" : "s"} from a background job.`);
}

async function openJob(id, name) {
  clearError();
  clearTimeout(watchTimer);
  state.watching = id;
  // The player keeps the chosen file when the job came from it; other jobs have no media here.
  if (state.file && state.file.name !== name) clearFile();
  startTranscript(name, "transcribe");
  try {
    const job = await apiJson(`/v1/jobs/${id}`);
    if (job.input?.type === "url" && job.input.url && state.mediaUrl !== job.input.url) {
      loadPlayer(job.input.url, isVideoLink(job.input.url));
    }
    showJobProgress(job);
    openResult(job);
    $("transcript-title").focus();
  } catch (err) {
    showError(err);
  }
}

async function cancelJob(id) {
  try {
    await api(`/v1/jobs/${id}`, { method: "DELETE" });
    toast("Cancel requested");
  } catch (err) {
    showError(err);
  }
  refreshJobs();
}

/** The list of recent jobs, again until none of them is running; hidden when jobs are off. */
export async function refreshJobs() {
  clearTimeout(jobsTimer);
  if (!state.jobsEnabled) return;
  let jobs;
  try {
    const list = await apiJson("/v1/jobs?limit=20");
    jobs = list.data;
    // Jobs from this browser that have dropped off the first page are still ours to show.
    const listed = new Set(jobs.map((j) => j.id));
    const missing = savedJobs().filter((j) => !listed.has(j.id)).slice(0, 10);
    for (const saved of missing) {
      try {
        jobs.push(await apiJson(`/v1/jobs/${saved.id}`));
      } catch (err) {
        if (err.status === 404) forgetJob(saved.id);
      }
    }
  } catch (err) {
    if (err.status === 503 && /jobs are off/i.test(err.message)) {
      state.jobsEnabled = false;
      $("jobs-card").hidden = true;
      updateOptions();
    } else {
      $("jobs-note").textContent = "Couldn't load the jobs: " + explain(err)[0];
      $("jobs-note").hidden = false;
    }
    return;
  }
  jobs.sort((a, b) => b.created_at - a.created_at);
  renderJobs(jobs, { open: openJob, follow: watch, cancel: cancelJob });
  if (jobs.some((j) => !FINAL.has(j.status))) jobsTimer = setTimeout(refreshJobs, 2000);
}

/** The list's Refresh button. */
export function initJobs() {
  $("jobs-refresh").addEventListener("click", refreshJobs);
}
