// Jobs this browser submitted (localStorage, so the page can be left and come back to), and
// the list of recent jobs.
import { clock } from "./formats.js";

const $ = (id) => document.getElementById(id);
const JOB_STORE = "whisperd.jobs"; // localStorage: jobs this browser submitted
export const WATCH_STORE = "whisperd.watching"; // localStorage: the job the page follows
export const FINAL = new Set(["succeeded", "failed", "cancelled"]);

export function savedJobs() {
  try {
    return JSON.parse(localStorage.getItem(JOB_STORE)) || [];
  } catch {
    return [];
  }
}

export function rememberJob(job, name) {
  const jobs = savedJobs().filter((j) => j.id !== job.id);
  jobs.unshift({ id: job.id, name, created: job.created_at });
  localStorage.setItem(JOB_STORE, JSON.stringify(jobs.slice(0, 50)));
}

export function forgetJob(id) {
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
export function renderJobs(jobs, actions) {
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
