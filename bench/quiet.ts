import { readdirSync, readFileSync } from 'node:fs'

// This machine is shared: other jobs (test runs, type checks, installs) come and go, and on two
// cores one of them is enough to halve a figure. The bench therefore measures how much CPU is
// used *outside* its own process tree while a scenario runs ("background"), waits for a quiet
// machine before each scenario, and repeats a scenario that was disturbed.

const HZ = 100 // USER_HZ: /proc/stat and /proc/<pid>/stat count in 1/100 s on Linux

function systemTicks (): { busy: number, total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]
  const v = line.trim().split(/\s+/).slice(1).map(Number)
  // user nice system idle iowait irq softirq steal guest guest_nice (guest is already in user)
  const idle = (v[3] ?? 0) + (v[4] ?? 0)
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0)
  return { busy: total - idle, total }
}

/** CPU ticks of `root` and all its descendants (live processes). */
function treeTicks (root: number): number {
  const procs = new Map<number, { ppid: number, ticks: number }>()
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8')
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15
      procs.set(Number(name), { ppid: Number(rest[1]), ticks: Number(rest[11]) + Number(rest[12]) })
    } catch { /* exited meanwhile */ }
  }
  const children = new Map<number, number[]>()
  for (const [pid, p] of procs) (children.get(p.ppid) ?? children.set(p.ppid, []).get(p.ppid)!).push(pid)
  let sum = 0
  const stack = [root]
  while (stack.length) {
    const pid = stack.pop()!
    sum += procs.get(pid)?.ticks ?? 0
    stack.push(...(children.get(pid) ?? []))
  }
  return sum
}

export interface CpuWindow { end (): { backgroundCores: number, ownCores: number, seconds: number } }

/** Starts a window; end() says how many cores others (and we) kept busy on average. */
export function cpuWindow (root = process.pid): CpuWindow {
  const s0 = systemTicks()
  const o0 = treeTicks(root)
  const t0 = performance.now()
  return {
    end () {
      const s1 = systemTicks()
      const o1 = treeTicks(root)
      const seconds = (performance.now() - t0) / 1000
      const own = (o1 - o0) / HZ / seconds
      const busy = (s1.busy - s0.busy) / HZ / seconds
      return { backgroundCores: Math.max(0, busy - own), ownCores: own, seconds }
    },
  }
}

/** Waits until others use less than `maxCores` over a 1 s window; gives up after maxWaitMs. */
export async function waitForQuiet (maxCores: number, maxWaitMs: number, onWait?: (bg: number, waitedMs: number) => void): Promise<{ quiet: boolean, waitedMs: number, backgroundCores: number }> {
  const started = performance.now()
  let bg = Number.NaN
  let logged = 0
  for (;;) {
    const w = cpuWindow()
    await new Promise((resolve) => setTimeout(resolve, 1000))
    bg = w.end().backgroundCores
    const waited = performance.now() - started
    if (bg < maxCores) return { quiet: true, waitedMs: waited, backgroundCores: bg }
    if (waited >= maxWaitMs) return { quiet: false, waitedMs: waited, backgroundCores: bg }
    if (onWait && waited - logged >= 10_000) { logged = waited; onWait(bg, waited) }
  }
}
