// The page's one client of server-sent events: a streamed transcription's response, read as
// it arrives.
import { ApiError, TYPE_STATUS } from "./api.js";

/** The events of an event stream (a fetch() Response), each one's `data:` lines parsed as
 * JSON. An error event, which arrives after the 200, throws as the ApiError it stands for. */
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer
        .slice(0, end)
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trim())
        .join("\n");
      buffer = buffer.slice(end + 2);
      if (!data) continue;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(TYPE_STATUS[event.error.type] ?? 500, event.error);
      yield event;
    }
  }
}
