// The whisperd web page: plain JavaScript against the server's own API, nothing else. Each
// panel is a module; this one wires them together and starts the page.
import { initKeyDialog } from "./api.js";
import { describeChoice, fillLanguages, initForm, loadModels, showSource } from "./form.js";
import { initJobs, refreshJobs, resumeWatching } from "./jobs.js";
import { initLive } from "./live.js";
import { initPlayer } from "./player.js";
import { highlight, initTranscript } from "./transcript.js";
import { initUpload } from "./upload.js";

initKeyDialog();
initForm();
initPlayer({ onDuration: describeChoice, onTime: highlight });
initTranscript();
initUpload();
initLive();
initJobs();

fillLanguages();
showSource();
await loadModels();
await refreshJobs();
resumeWatching();
