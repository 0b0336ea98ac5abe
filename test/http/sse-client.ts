/** A streaming fetch reading the SSE wire format, for tests of the live-event endpoints. */
export interface SseEvent {
  event: string;
  data: unknown;
  id?: string;
}

/** A streaming fetch reading the SSE wire format: what a browser's EventSource sees, frame by frame. */
export async function sseClient(baseUrl: string, path: string, headers: Record<string, string> = {}) {
  const controller = new AbortController();
  const res = await fetch(`${baseUrl}${path}`, { headers: { accept: 'text/event-stream', ...headers }, signal: controller.signal });
  const events: SseEvent[] = [];
  const comments: string[] = [];
  // As EventSource keeps it: set by every `id:` line, a frame without data included.
  let lastEventId: string | undefined;
  let ended = false;
  let wake: (() => void) | undefined;
  const pump = (async () => {
    if (!res.body || !res.headers.get('content-type')?.startsWith('text/event-stream')) return;
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for await (const chunk of res.body) {
        buffer += decoder.decode(chunk as Uint8Array, { stream: true });
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const fields: Record<string, string> = {};
          for (const line of frame.split('\n')) {
            if (line.startsWith(':')) comments.push(line.slice(1).trim());
            const colon = line.indexOf(':');
            if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 1).trimStart();
          }
          if (fields.id !== undefined) lastEventId = fields.id;
          if (fields.data !== undefined)
            events.push({ event: fields.event ?? 'message', data: JSON.parse(fields.data), ...(fields.id ? { id: fields.id } : {}) });
          wake?.();
        }
      }
    } catch {
      // aborted by the test
    } finally {
      ended = true;
      wake?.();
    }
  })();
  /** Resolves once `ready()` holds, re-checked after every frame; fails after `ms`. */
  const until = async (ready: () => boolean, what: string, ms = 10_000) => {
    const deadline = Date.now() + ms;
    while (!ready()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(events.map((e) => e.event))}`);
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 50);
      });
    }
  };
  return {
    res,
    events,
    comments,
    get ended() {
      return ended;
    },
    /** What EventSource would send as Last-Event-ID on its reconnect. */
    get lastEventId() {
      return lastEventId;
    },
    until,
    /** Waits for the server to end the stream. */
    finished: () => until(() => ended, 'the end of the stream').then(() => pump),
    close: async () => {
      controller.abort();
      await pump;
    },
  };
}
