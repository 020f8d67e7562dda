// Incremental Server-Sent Events framing for the upstream's `data:` stream. It only splits events;
// each complete event is handed on at once, so nothing waits for the stream to end.

export interface SseEvent {
  /** The event exactly as received, terminator included, so it can be forwarded byte for byte. */
  raw: string
  /** The joined `data:` lines, or undefined for comment/keep-alive events. */
  data?: string
}

const MAX_EVENT_CHARS = 4 * 1024 * 1024

export class SseSplitter {
  private buf = ''

  /** Feeds a chunk; returns the events it completed. Throws when one event exceeds the limit. */
  push (chunk: string): SseEvent[] {
    this.buf += chunk
    const events: SseEvent[] = []
    for (;;) {
      const m = /\r?\n\r?\n/.exec(this.buf)
      if (!m) break
      const end = m.index + m[0].length
      const raw = this.buf.slice(0, end)
      this.buf = this.buf.slice(end)
      events.push(parseEvent(raw))
    }
    if (this.buf.length > MAX_EVENT_CHARS) throw new Error('SSE event exceeds size limit')
    return events
  }

  /** Whatever is left when the stream ends without a final blank line. */
  flush (): SseEvent[] {
    if (this.buf.trim() === '') { this.buf = ''; return [] }
    const raw = this.buf
    this.buf = ''
    return [parseEvent(raw)]
  }
}

function parseEvent (raw: string): SseEvent {
  const data: string[] = []
  for (const line of raw.split(/\r?\n/)) {
    if (line.startsWith('data:')) data.push(line.slice(line[5] === ' ' ? 6 : 5))
  }
  return data.length > 0 ? { raw, data: data.join('\n') } : { raw }
}
