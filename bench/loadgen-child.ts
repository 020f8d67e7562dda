import { cannon, paced, paid, soak, streams } from './loadgen.ts'
import { sendEvent, serveRpc } from './proc.ts'

// The load generator's own process: autocannon and the undici drivers never share an event loop
// with the reference backend (which lives in the driver process) or with the server under test.

serveRpc({
  cannon,
  paced,
  streams,
  paid,
  soak: (args: Parameters<typeof soak>[0]) => soak(args, (p) => sendEvent('soak-progress', p)),
  usage: () => ({ cpu: process.cpuUsage(), rss: process.memoryUsage().rss }),
  close () { setImmediate(() => process.exit(0)); return true },
})
process.send!({ ready: { pid: process.pid } })
